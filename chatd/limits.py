"""chatd's traffic limits: the numbers (``Limits``) and the primitives that enforce them.

Everything here runs on the hub's event-loop thread, so nothing takes a lock; every
call is O(1) and memory is bounded (per connection, or by the live connections). The
clock is injectable so tests can move time by hand; it defaults to ``time.monotonic``,
which wall-clock changes cannot move backwards.

Where a handler calls them:

- ``ConnectionLimiter.admit`` before accepting an upgrade, ``release`` when it ends;
- ``MessageGate.check`` on every raw message, before any JSON parsing, so a flood costs
  the server a counter, not a parse;
- ``RoomQuota.allows`` before a ``join``.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

__all__ = [
    "ConnectionLimiter",
    "Limits",
    "MessageGate",
    "Refusal",
    "RoomQuota",
    "TokenBucket",
    "Verdict",
    "ip_group",
]

Clock = Callable[[], float]

#: Why ``ConnectionLimiter.admit`` refused a connection (usable as an error code).
Refusal = Literal["server_full", "too_many_from_ip"]


def _require(ok: bool, name: str, rule: str, value: object) -> None:
    """Raise the ``ValueError`` every check here uses: the field first, then the rule."""
    if not ok:
        raise ValueError(f"{name} must be {rule}, not {value!r}")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_count(value) or (isinstance(value, float) and math.isfinite(value))


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled continuously at ``rate`` per second.

    It starts full, so a client may send ``burst`` messages at once and then ``rate`` per
    second on average. A ``rate`` of 0 (or less) means unlimited: ``take`` is always True.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        _require(not math.isnan(rate), "rate", "a number", rate)
        if rate > 0:
            # A bucket that can never hold one token would refuse everything.
            _require(burst >= 1, "burst", "at least 1 when rate is positive", burst)
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens and return True, or take nothing and return False.

        A refusal costs nothing, so a client that waits gets through. A ``cost`` above
        ``burst`` can never be paid.
        """
        # Called on every frame: a few float operations, no allocation.
        if self.rate <= 0:
            return True
        _require(cost >= 0, "cost", "at least 0", cost)
        now = self._clock()
        if now > self._last:  # a clock that stepped back refills nothing
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class Verdict(enum.Enum):
    """What ``MessageGate.check`` says to do with one incoming message."""

    #: Within the limit: parse and handle it.
    PASS = "pass"
    #: Over the limit: drop it unparsed and answer an ``error`` with code ``rate_limited``.
    REFUSE = "refuse"
    #: Over the limit and the client kept going: close the connection with 1008.
    CLOSE = "close"


class MessageGate:
    """The per-connection message rate limit, checked on every raw message before parsing.

    A message over the rate limit (a ``TokenBucket`` of ``rate`` and ``burst``) is
    refused; each refusal is a strike. More than ``strikes`` strikes within ``window``
    seconds means the client ignores the ``rate_limited`` errors, so the gate says CLOSE.

    The choice: an exact sliding window, kept as the times of the last ``strikes + 1``
    refusals in a bounded deque. A fixed window would be one counter, but would let a
    client spread up to twice ``strikes`` refusals across a window boundary; the deque
    costs ``strikes + 1`` floats per connection and O(1) per check. Strikes older than
    ``window`` simply stop counting; accepted messages do not erase them. ``strikes=0``
    closes on the first refusal. CLOSE is final: every later check says CLOSE too, so the
    messages still queued behind it are not handled while the connection closes.
    """

    __slots__ = ("_bucket", "_clock", "_closed", "_refusals", "window")

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        strikes: int = 10,
        window: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        _require(strikes >= 0, "strikes", "at least 0", strikes)
        _require(window > 0 and math.isfinite(window), "window", "a positive number", window)
        self._bucket = TokenBucket(rate, burst, clock=clock)
        self._clock = clock
        self._refusals: deque[float] = deque(maxlen=strikes + 1)
        self._closed = False
        self.window = window

    @property
    def strikes(self) -> int:
        """Refusals tolerated within ``window`` seconds; one more means CLOSE."""
        maxlen = self._refusals.maxlen
        assert maxlen is not None
        return maxlen - 1

    def check(self) -> Verdict:
        """The verdict on one incoming message (every message counts as one token)."""
        if self._closed:
            return Verdict.CLOSE
        if self._bucket.take():
            return Verdict.PASS
        now = self._clock()
        refusals = self._refusals
        refusals.append(now)  # the oldest beyond strikes + 1 falls out of the deque
        if len(refusals) == refusals.maxlen and now - refusals[0] <= self.window:
            self._closed = True
            return Verdict.CLOSE
        return Verdict.REFUSE


def ip_group(ip: str) -> str:
    """The key connections from ``ip`` are counted under (also good for log lines).

    IPv4: the address itself. IPv6: its /64 prefix, written ``2001:db8::/64``, because one
    host or subscriber usually gets a whole /64 and could otherwise pick a fresh address
    per connection. IPv4-mapped IPv6 (``::ffff:192.0.2.1``, from dual-stack sockets): the
    IPv4 address, so a client counts the same on either kind of listener. Anything that is
    not an IP address (a Unix socket path, say) is counted under the string as given.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ConnectionLimiter:
    """Counts live connections, in total and per ``ip_group``, and refuses new ones over a cap.

    0 means unlimited for either cap. ``admit`` counts a connection only when it returns
    None; pair each such call with exactly one ``release``. The per-IP table holds only
    groups with live connections, so its size is bounded by the live connections.
    """

    __slots__ = ("_counts", "_total", "max_per_ip", "max_total")

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        _require(max_total >= 0, "max_total", "at least 0 (0 is unlimited)", max_total)
        _require(max_per_ip >= 0, "max_per_ip", "at least 0 (0 is unlimited)", max_per_ip)
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._counts: dict[str, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        """Live connections admitted and not yet released."""
        return self._total

    def count(self, ip: str) -> int:
        """Live connections counted under ``ip``'s group."""
        return self._counts.get(ip_group(ip), 0)

    def admit(self, ip: str) -> Refusal | None:
        """Count a new connection from ``ip`` and return None, or return why it is refused.

        ``"server_full"`` is checked first: when both caps are reached, the server's state
        is the truer reason.
        """
        if self.max_total and self._total >= self.max_total:
            return "server_full"
        group = ip_group(ip)
        current = self._counts.get(group, 0)
        if self.max_per_ip and current >= self.max_per_ip:
            return "too_many_from_ip"
        self._counts[group] = current + 1
        self._total += 1
        return None

    def release(self, ip: str) -> None:
        """Forget one admitted connection from ``ip``.

        Releasing what was never admitted is a bug in the caller and raises ``ValueError``
        rather than letting the counts drift.
        """
        group = ip_group(ip)
        current = self._counts.get(group, 0)
        if current <= 0:
            raise ValueError(f"release({ip!r}): no admitted connection from {group}")
        if current == 1:
            del self._counts[group]  # bounded memory: no entries for idle addresses
        else:
            self._counts[group] = current - 1
        self._total -= 1


@dataclass(frozen=True, slots=True)
class RoomQuota:
    """How many rooms one connection may be in at once; 0 means unlimited."""

    max_rooms: int

    def __post_init__(self) -> None:
        _require(self.max_rooms >= 0, "max_rooms", "at least 0 (0 is unlimited)", self.max_rooms)

    def allows(self, current_rooms: int) -> bool:
        """True if a connection already in ``current_rooms`` rooms may join one more."""
        return not self.max_rooms or current_rooms < self.max_rooms


@dataclass(frozen=True, slots=True)
class Limits:
    """chatd's traffic limits in one place (DESIGN.md defaults); ``validate`` checks them.

    For the caps on connections and rooms 0 means unlimited, as does a ``message_rate``
    of 0; sizes, lengths, the burst and the window must be positive.
    """

    message_rate: float = 10.0
    """Messages per second one connection may send on average (0: unlimited)."""
    message_burst: int = 20
    """Messages one connection may send at once before the rate applies."""
    rate_strikes: int = 10
    """Rate-limited messages tolerated within ``strike_window``; one more closes with 1008
    (0: close on the first)."""
    strike_window: float = 10.0
    """Seconds over which ``rate_strikes`` are counted."""
    max_connections: int = 10_000
    """Live WebSocket connections the server accepts in total (0: unlimited)."""
    max_connections_per_ip: int = 256
    """Live connections from one IPv4 address or IPv6 /64 (0: unlimited); generous for NAT."""
    max_rooms_per_connection: int = 50
    """Rooms one connection may be in at once (0: unlimited)."""
    max_message_bytes: int = 65536
    """Largest raw message chatd accepts (larger ones are closed with 1009 before they are
    buffered): 4,000 characters of text take at most 48,000 bytes even when every one is
    JSON-escaped (``\\ud83d\\ude00`` for an emoji), plus the JSON around them."""
    max_name: int = 50
    """Longest user name, in characters."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is negative or makes no sense."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type in ("float", float):
                _require(_is_number(value), field.name, "a finite number", value)
            else:
                _require(_is_count(value), field.name, "an integer", value)
        positive = ("message_burst", "strike_window", "max_message_bytes", "max_name")
        for name in positive:
            value = getattr(self, name)
            _require(value > 0, name, "positive", value)
        non_negative = (
            "message_rate",
            "rate_strikes",
            "max_connections",
            "max_connections_per_ip",
            "max_rooms_per_connection",
        )
        for name in non_negative:
            value = getattr(self, name)
            _require(value >= 0, name, "at least 0", value)
