"""The Redis bus: several chatd nodes share rooms, presence and history (``--bus redis://``).

What lives in Redis (keys under ``chatd:``)::

    seq:<room>        INCR: the one authority for a room's seq
    log:<room>        a stream, entry id "<seq>-0": the room's durable history
    rooms             a set of every room name
    dmseq, dms        the same for direct messages (one sequence for all of them)
    cid:[...]         a sender's client id -> the seq it got (a resend is not stored twice)
    bus               a stream every node reads: committed messages and DMs, in the order
                      they were numbered, and the nodes' events (presence, typing, ...)

A write is one Lua script, so numbering, storing and announcing it are one atomic step:
the ``bus`` stream holds every room's messages in seq order. Each node reads ``bus`` and
applies it to its own SQLite file, a replica of the shared history: reads (``joined``,
``history``, ``resume``) never leave the node, and every node delivers in one order.
A node that was away, or finds a gap (a trimmed stream, a Redis restart), reads the missing
seqs from ``log:<room>`` before going on, so its replica never has a hole.

Threads. The event loop never waits for Redis. A *writer* thread sends the writes and
events in pipelines (one round trip per batch); a *reader* thread blocks in ``XREAD``. They
touch no chat state: results and entries go to the loop through
``Server.call_soon_threadsafe``, and the reader waits while the loop has not taken its
last batches, so memory stays bounded however far behind a node is.

When Redis goes away both threads retry with backoff (0.1 s doubling to 5 s). The node
keeps its WebSocket clients; presence and typing between them still work. Writes wait in
an outbox (``max_outbox``; beyond it a sender gets ``unavailable``) and are sent when Redis
is back; client ids make a retried write stored once. Nothing is acknowledged before Redis
has it, so Redis must persist what it acknowledges (``appendonly yes``; ``appendfsync
always`` for an acknowledgement to survive a power loss of the Redis machine).
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from chatd.bus import BusUnavailable, WriteDone, redacted
from chatd.storage import StoredDM, StoredMessage

__all__ = ["DEFAULT_MAX_OUTBOX", "RedisBus"]

logger = logging.getLogger("chatd.bus")

#: Writes waiting for Redis before senders are refused with ``unavailable``.
DEFAULT_MAX_OUTBOX = 10_000
#: Entries the ``bus`` stream keeps (approximately): enough for a node away for a while to
#: catch up from the stream; beyond that it reads the room logs.
DEFAULT_STREAM_LENGTH = 100_000
#: Seconds a client id is remembered in Redis (a resend after that is stored again).
CLIENT_ID_TTL = 7 * 24 * 3600
#: Milliseconds the reader blocks in XREAD before checking whether it should stop.
READ_BLOCK_MS = 1000
#: Entries per XREAD, per pipeline and per page of a log read.
BATCH = 512
#: Batches handed to the loop and not yet taken before the reader waits.
MAX_HANDED = 4
#: Seconds between the reader's checks that Redis is the same process (its run_id).
RUN_ID_CHECK = 1.0

_MESSAGE_SCRIPT = """
if ARGV[5] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {tonumber(seen), 0} end
end
local seq = redis.call('INCR', KEYS[1])
if seq <= tonumber(ARGV[9]) then
  seq = tonumber(ARGV[9]) + 1
  redis.call('SET', KEYS[1], seq)
end
redis.call('XADD', KEYS[2], seq .. '-0',
  'ts', ARGV[6], 's', ARGV[2], 't', ARGV[3], 'k', ARGV[4], 'c', ARGV[5])
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], seq, 'EX', ARGV[8]) end
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'r', 'm', 'room', ARGV[1],
  'seq', seq, 'ts', ARGV[6], 's', ARGV[2], 't', ARGV[3], 'k', ARGV[4], 'c', ARGV[5])
return {seq, 1}
"""

_DM_SCRIPT = """
if ARGV[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {tonumber(seen), 0} end
end
local id = redis.call('INCR', KEYS[1])
if id <= tonumber(ARGV[8]) then
  id = tonumber(ARGV[8]) + 1
  redis.call('SET', KEYS[1], id)
end
redis.call('XADD', KEYS[2], id .. '-0',
  'ts', ARGV[5], 's', ARGV[1], 'to', ARGV[2], 't', ARGV[3], 'c', ARGV[4])
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], id, 'EX', ARGV[7]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'r', 'd', 'id', id, 'ts', ARGV[5],
  's', ARGV[1], 'to', ARGV[2], 't', ARGV[3], 'c', ARGV[4])
return {id, 1}
"""

#: Raise a sequence that Redis lost (it restarted without its data) to what a replica has
#: seen, so that no seq is handed out twice.
_RAISE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return current
"""

_NETWORK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)

Item = StoredMessage | StoredDM | dict[str, Any]


@dataclass(slots=True)
class _Request:
    """One command for the writer: a write (``done`` set) or an event (fire and forget)."""

    kind: str  # "message", "dm" or "event"
    keys: list[str]
    args: list[str | int]
    done: WriteDone | None = None
    room: str = ""


class _Backoff:
    """Waits between reconnection attempts: 0.1 s doubling to 5 s, with jitter."""

    def __init__(self) -> None:
        self.delay = 0.1

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, 5.0)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = 0.1


class RedisBus:
    """The bus of a node among several, through one Redis server (standalone or a
    replicated primary: the keys are not laid out for Redis Cluster).

    Call ``start`` with the loop's ``call_soon_threadsafe`` and the hub's ``apply_bus``
    once the loop exists; everything else is called on the loop thread.
    """

    #: The Lua scripts look client ids up in Redis: no database lookup before a write.
    dedups = True

    def __init__(
        self,
        url: str,
        node: str,
        *,
        last_seqs: dict[str, int],
        last_dm_id: int,
        prefix: str = "chatd",
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        stream_length: int = DEFAULT_STREAM_LENGTH,
    ) -> None:
        self.url = url
        self.node = node
        self.prefix = prefix
        self.max_outbox = max_outbox
        self.stream_length = stream_length
        # Checked now, so that a bad URL stops the start instead of a thread.
        redis.Redis.from_url(url)
        self._bus_key = f"{prefix}:bus"
        # The reader's: what it has handed to the loop.
        self._known = dict(last_seqs)
        self._known_dm = last_dm_id
        # The loop's: the same figures as the loop has taken them (the writes' floors).
        self._floors = dict(last_seqs)
        self._dm_floor = last_dm_id
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._handed = threading.Semaphore(MAX_HANDED)
        #: The reader waited for the loop to take its batches (reader thread only).
        self._waited = False
        self._threads: list[threading.Thread] = []
        self._call_soon: Callable[[Callable[[], None]], None] | None = None
        self._deliver: Callable[[Sequence[Item]], None] | None = None
        # Loop-side state (only the loop thread reads and writes these).
        self.writes_waiting = 0
        self._writer_up = False
        self._reader_up = False
        self.down_since: float | None = time.monotonic()
        self.reconnects = 0
        self.last_error: str | None = None
        self.refused = 0
        self.events_dropped = 0
        self.entries_received = 0

    # --- loop side ---------------------------------------------------------------------------

    def start(
        self,
        call_soon: Callable[[Callable[[], None]], None],
        deliver: Callable[[Sequence[Item]], None],
    ) -> None:
        """Start the writer and reader threads."""
        self._call_soon = call_soon
        self._deliver = deliver
        for name, target in (("writer", self._writer), ("reader", self._reader)):
            thread = threading.Thread(target=target, name=f"chatd-bus-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def up(self) -> bool:
        return self._writer_up and self._reader_up

    def write_message(  # noqa: PLR0917 - a row, as Storage.add_message takes it
        self,
        room: str,
        sender: str,
        text: str,
        kind: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        p = self.prefix
        cid = client_id or ""
        keys = [
            f"{p}:seq:{room}",
            f"{p}:log:{room}",
            self._bus_key,
            f"{p}:cid:" + json.dumps([room, sender, cid]),
            f"{p}:rooms",
        ]
        args: list[str | int] = [
            room,
            sender,
            text,
            kind,
            cid,
            ts,
            self.stream_length,
            CLIENT_ID_TTL,
            # The last seq this node has seen: never handed out again, even by a Redis
            # that restarted without its data before the reader noticed.
            self._floors.get(room, 0),
        ]
        self._write(_Request("message", keys, args, done, room))

    def write_dm(  # noqa: PLR0917
        self,
        sender: str,
        recipient: str,
        text: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        p = self.prefix
        cid = client_id or ""
        keys = [f"{p}:dmseq", f"{p}:dms", self._bus_key, f"{p}:dmcid:" + json.dumps([sender, cid])]
        args: list[str | int] = [
            sender,
            recipient,
            text,
            cid,
            ts,
            self.stream_length,
            CLIENT_ID_TTL,
            self._dm_floor,
        ]
        self._write(_Request("dm", keys, args, done))

    def _write(self, request: _Request) -> None:
        assert request.done is not None
        if self.writes_waiting >= self.max_outbox:
            self.refused += 1
            request.done(BusUnavailable(f"{self.writes_waiting} writes already wait for Redis"))
            return
        self.writes_waiting += 1
        self._queue.put(request)

    def publish(self, event: dict[str, Any]) -> None:
        if not self._writer_up:
            self.events_dropped += 1  # a snapshot after the reconnection heals it
            return
        data = json.dumps(event, separators=(",", ":"))
        self._queue.put(
            _Request("event", [self._bus_key], ["e", self.node, data, self.stream_length])
        )

    def status(self) -> dict[str, Any]:
        down = None if self.down_since is None else round(time.monotonic() - self.down_since, 3)
        return {
            "kind": "redis",
            "node": self.node,
            "url": redacted(self.url),
            "up": self.up,
            "down_for": down,
            "outbox": self.writes_waiting,
            "reconnects": self.reconnects,
            "refused": self.refused,
            "received": self.entries_received,
            "events_dropped": self.events_dropped,
            "last_error": self.last_error,
        }

    def close(self, timeout: float = 3.0) -> None:
        """Stop the threads: the writer first sends what it holds (``bye`` included),
        for up to ``timeout`` seconds.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _state(self, side: str, up: bool, error: BaseException | None = None) -> None:
        """A thread's connection came up or went down (on the loop thread)."""
        was = self.up
        if side == "writer":
            self._writer_up = up
        else:
            self._reader_up = up
        if error is not None:
            self.last_error = f"{type(error).__name__}: {error}"
        if was and not self.up:
            self.down_since = time.monotonic()
            logger.error(
                "Redis at %s is unreachable (%s): serving this node's clients, retrying",
                redacted(self.url),
                self.last_error,
            )
        elif self.up and not was:
            if self.down_since is not None and self.reconnects:
                logger.warning(
                    "Redis at %s is back after %.1f s",
                    redacted(self.url),
                    time.monotonic() - self.down_since,
                )
            else:
                logger.info("bus: node %s connected to Redis at %s", self.node, redacted(self.url))
            self.reconnects += 1
            self.down_since = None

    def _finished(self, batch: list[_Request], results: list[Any]) -> None:
        """The writer's results (on the loop thread): numbers to their writers."""
        for request, result in zip(batch, results, strict=True):
            if request.done is None:
                continue
            self.writes_waiting -= 1
            if isinstance(result, BaseException):
                request.done(result)
                continue
            number = int(result[0])
            if request.kind == "message":
                if number > self._floors.get(request.room, 0):
                    self._floors[request.room] = number
            elif number > self._dm_floor:
                self._dm_floor = number
            request.done(number)

    def _arrived(self, items: Sequence[Item]) -> None:
        """The reader's entries (on the loop thread), in the bus's order."""
        try:
            self.entries_received += len(items)
            floors = self._floors
            for item in items:
                if isinstance(item, StoredMessage):
                    if item.seq > floors.get(item.room, 0):
                        floors[item.room] = item.seq
                elif isinstance(item, StoredDM) and item.id > self._dm_floor:
                    self._dm_floor = item.id
            assert self._deliver is not None
            self._deliver(items)
        finally:
            self._handed.release()

    # --- the writer thread -------------------------------------------------------------------

    def _soon(self, callback: Callable[[], None]) -> None:
        assert self._call_soon is not None
        self._call_soon(callback)

    def _writer(self) -> None:
        # Any: redis-py's replies are typed as unions of every reply shape.
        client: Any = redis.Redis.from_url(self.url, socket_timeout=5.0, socket_connect_timeout=2.0)
        scripts = {
            "message": client.register_script(_MESSAGE_SCRIPT),
            "dm": client.register_script(_DM_SCRIPT),
        }
        backoff = _Backoff()
        batch: list[_Request] = []
        up = False
        while True:
            if not batch:
                if self._stop.is_set() and self._queue.empty():
                    break
                try:
                    batch.append(self._queue.get(timeout=0.2))
                except queue.Empty:
                    if not up:
                        up = self._ping(client, backoff)
                    continue
                while len(batch) < BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                pipe = client.pipeline(transaction=False)
                for request in batch:
                    if request.kind == "event":
                        kind, node, data, length = request.args
                        pipe.xadd(
                            request.keys[0],
                            {"r": kind, "n": node, "e": data},
                            maxlen=int(length),
                            approximate=True,
                        )
                    else:
                        scripts[request.kind](keys=request.keys, args=request.args, client=pipe)
                results = pipe.execute(raise_on_error=False)
            except Exception as error:  # the thread must live on
                if not isinstance(error, _NETWORK_ERRORS):
                    logger.exception("bus writer: unexpected error; retrying")
                up = False
                self._soon(functools.partial(self._state, "writer", False, error))
                batch = [request for request in batch if request.done is not None]
                if self._stop.is_set():
                    break  # shutting down: unacknowledged writes stay unacknowledged
                self._stop.wait(backoff.next())
                continue
            if not up:
                up = True
                backoff.reset()
                self._soon(lambda: self._state("writer", True))
            done, batch = batch, []
            self._soon(functools.partial(self._finished, done, results))
        client.close()

    def _ping(self, client: Any, backoff: _Backoff) -> bool:
        """An idle writer checks the connection, so that ``up`` means something."""
        try:
            client.ping()
        except _NETWORK_ERRORS as error:
            self._soon(functools.partial(self._state, "writer", False, error))
            self._stop.wait(backoff.next())
            return False
        backoff.reset()
        self._soon(lambda: self._state("writer", True))
        return True

    # --- the reader thread -------------------------------------------------------------------

    def _reader(self) -> None:
        client: Any = redis.Redis.from_url(
            self.url, socket_timeout=READ_BLOCK_MS / 1000 + 5.0, socket_connect_timeout=2.0
        )
        backoff = _Backoff()
        position: str | None = None
        synced = False
        run_id = None
        checked = 0.0
        while not self._stop.is_set():
            try:
                if synced and (self._waited or time.monotonic() - checked > RUN_ID_CHECK):
                    self._waited = False
                    # redis-py reconnects by itself between two commands: a restarted
                    # Redis shows as a new run_id, and is caught up with like a reconnection.
                    checked = time.monotonic()
                    if client.info("server")["run_id"] != run_id:
                        logger.warning("Redis restarted: catching up from the room logs")
                        synced = False
                if not synced:
                    run_id = client.info("server")["run_id"]
                    checked = time.monotonic()
                    if position is None:
                        newest = client.xrevrange(self._bus_key, count=1)
                        position = newest[0][0].decode() if newest else "0-0"
                    self._catch_up(client)
                    synced = True
                    backoff.reset()
                    self._soon(lambda: self._state("reader", True))
                reply = client.xread({self._bus_key: position}, count=BATCH, block=READ_BLOCK_MS)
                if not reply:
                    continue
                items: list[Item] = []
                for entry_id, fields in reply[0][1]:
                    position = entry_id.decode()
                    try:
                        items.extend(self._parse(client, fields))
                    except (KeyError, ValueError) as error:
                        # Not written by chatd (or by another version): skipped, never
                        # retried forever.
                        logger.error("bus entry %s skipped: %r (%s)", position, fields, error)
                if items:
                    self._hand_over(items)
            except Exception as error:  # the thread must live on
                if not isinstance(error, _NETWORK_ERRORS):
                    logger.exception("bus reader: unexpected error; reconnecting")
                synced = False
                self._soon(functools.partial(self._state, "reader", False, error))
                self._stop.wait(backoff.next())
        client.close()

    def _hand_over(self, items: list[Item]) -> None:
        if not self._handed.acquire(blocking=False):
            self._waited = True  # Redis may have restarted meanwhile: check at once
            while not self._handed.acquire(timeout=0.5):
                if self._stop.is_set():
                    return
        self._soon(functools.partial(self._arrived, items))

    def _parse(self, client: Any, fields: dict[bytes, bytes]) -> list[Item]:
        """One ``bus`` entry as records or an event; a gap before a record is filled from
        the log first, and a record this node already has is skipped.
        """
        kind = fields[b"r"]
        if kind == b"e":
            if fields[b"n"].decode() == self.node:
                return []
            event: dict[str, Any] = json.loads(fields[b"e"])
            return [event]
        if kind == b"m":
            room = fields[b"room"].decode()
            seq = int(fields[b"seq"])
            known = self._known.get(room, 0)
            if seq <= known:
                return []
            items: list[Item] = []
            if seq > known + 1:
                items.extend(self._room_log(client, room, known, seq - 1))
            items.append(_message(room, seq, fields))
            self._known[room] = seq
            return items
        dm_id = int(fields[b"id"])
        if dm_id <= self._known_dm:
            return []
        dms: list[Item] = []
        if dm_id > self._known_dm + 1:
            dms.extend(self._dm_log(client, self._known_dm, dm_id - 1))
        dms.append(_dm(dm_id, fields))
        self._known_dm = dm_id
        return dms

    def _room_log(self, client: Any, room: str, after: int, until: int) -> list[Item]:
        """Messages ``after`` < seq <= ``until`` of ``room`` from its durable log."""
        return self._log(
            client,
            f"{self.prefix}:log:{room}",
            f"room {room}",
            after,
            until,
            lambda seq, fields: _message(room, seq, fields),
        )

    def _dm_log(self, client: Any, after: int, until: int) -> list[Item]:
        """DMs ``after`` < id <= ``until`` from their durable log."""
        return self._log(client, f"{self.prefix}:dms", "DMs", after, until, _dm)

    def _log(  # noqa: PLR0917 - a range of one log
        self,
        client: Any,
        key: str,
        what: str,
        after: int,
        until: int,
        make: Callable[[int, dict[bytes, bytes]], Item],
    ) -> list[Item]:
        """The entries ``after`` < number <= ``until`` of the log stream ``key`` (entry
        id "<number>-0"), page by page; a hole is logged, not waited for.
        """
        found: list[Item] = []
        start = after + 1
        while start <= until:
            entries = client.xrange(key, f"{start}-0", f"{until}-0", count=BATCH)
            if not entries:
                break
            for entry_id, fields in entries:
                number = int(entry_id.split(b"-")[0])
                found.append(make(number, fields))
                start = number + 1
        if start <= until:
            logger.error("%s: %d-%d are missing from Redis", what, start, until)
        return found

    def _catch_up(self, client: Any) -> None:
        """Bring the replica up to what Redis holds (at start, after a reconnection):
        every room's log after the last seq this node has, then the DMs.
        """
        p = self.prefix
        rooms = sorted(name.decode() for name in client.smembers(f"{p}:rooms"))
        in_redis = set(rooms)
        for offset in range(0, len(rooms), BATCH):
            names = rooms[offset : offset + BATCH]
            lasts = client.mget([f"{p}:seq:{room}" for room in names])
            for room, last in zip(names, lasts, strict=True):
                self._catch_up_room(client, room, int(last or 0))
        for room, known in self._known.items():
            if room not in in_redis and known:
                self._catch_up_room(client, room, 0)
        last_dm = int(client.get(f"{p}:dmseq") or 0)
        if last_dm < self._known_dm:
            self._lost(client, f"{p}:dmseq", "DMs", last_dm, self._known_dm)
        while last_dm > self._known_dm:
            until = min(last_dm, self._known_dm + BATCH)
            dms = self._dm_log(client, self._known_dm, until)
            self._known_dm = until
            if dms:
                self._hand_over(dms)

    def _catch_up_room(self, client: Any, room: str, last: int) -> None:
        known = self._known.get(room, 0)
        if last < known:
            self._lost(client, f"{self.prefix}:seq:{room}", f"room {room}", last, known)
            return
        while last > known:
            until = min(last, known + BATCH)
            messages = self._room_log(client, room, known, until)
            known = until
            self._known[room] = known
            if messages:
                self._hand_over(messages)

    def _lost(self, client: Any, key: str, what: str, redis_has: int, have: int) -> None:
        logger.error(
            "%s: Redis is at %d but this node has %d: Redis lost data (restarted without "
            "appendonly?); numbering continues after %d",
            what,
            redis_has,
            have,
            have,
        )
        client.eval(_RAISE_SCRIPT, 1, key, have)


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    return fields[name].decode()


def _message(room: str, seq: int, fields: dict[bytes, bytes]) -> StoredMessage:
    return StoredMessage(
        room,
        seq,
        int(fields[b"ts"]),
        _text(fields, b"s"),
        _text(fields, b"t"),
        _text(fields, b"k"),
        _text(fields, b"c") or None,
    )


def _dm(dm_id: int, fields: dict[bytes, bytes]) -> StoredDM:
    return StoredDM(
        dm_id,
        int(fields[b"ts"]),
        _text(fields, b"s"),
        _text(fields, b"to"),
        _text(fields, b"t"),
        _text(fields, b"c") or None,
    )
