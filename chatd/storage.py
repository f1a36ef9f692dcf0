"""Chat history in SQLite: users, rooms, room messages, direct messages and receipts.

The event loop is one thread and every call here runs on it, so every call must be
quick. Writes are therefore not written when they are made: ``add_message`` and friends
assign the message its ``seq`` (or DM id) and timestamp at once, keep it in memory, and
``commit`` writes everything queued since the last commit in one transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``). The hub calls ``commit`` once per loop tick and only
then acknowledges and delivers what it returned, so an acknowledged message is stored and
a ``seq`` is never handed out twice.

What a read sees:

* ``last_seq``, ``find_message``, ``find_dm`` and ``receipts`` include the pending queue:
  they decide the next ``seq``, de-duplication and whether a receipt advanced.
* ``recent``, ``history``, ``after``, ``dms_for``, ``rooms`` and ``counts`` see what
  ``commit`` has returned, and nothing newer, so a client never reads a message before
  its sender was acknowledged and before it was delivered to the room.

Durability. The database is in WAL mode. With ``synchronous="NORMAL"`` (the default) a
commit writes the transaction to the WAL without an ``fsync``; the WAL is synced at each
checkpoint. A crash of the *process* (an exception, ``SIGKILL``, the OOM killer) loses
nothing that was committed: the data is already in the operating system's page cache. A
power loss or kernel crash may roll the database back by the last few transactions
(never corrupt it), and those may have been acknowledged. ``synchronous="FULL"`` syncs
the WAL at every commit, so an acknowledgement means "on disk" even across power loss;
because writes are batched per tick it costs one ``fsync`` per tick, not per message, but
that ``fsync`` (a millisecond on an SSD, far more on a disk) runs on the event loop.
NORMAL is the default because chatd's failure model is the process; choose FULL when an
acknowledgement must survive the machine. Either way, what was still queued when the
process died is lost, but it had not been acknowledged either.

One process owns a database file: ``seq`` and DM ids are assigned in memory from what
was in the file when it was opened. Other processes may read it (WAL readers never block
the writer), e.g. ``sqlite3 chatd.sqlite3 .backup``.

The schema is created and migrated by the code: ``MIGRATIONS`` is an ordered list of
SQL scripts, each applied in one transaction that also records its number in the
``schema_version`` table. A database written by a newer chatd is refused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_MAX_PENDING",
    "MIGRATIONS",
    "RECEIPT_STATUSES",
    "SCHEMA_VERSION",
    "RoomInfo",
    "SchemaVersionError",
    "Storage",
    "StorageError",
    "StoredDM",
    "StoredMessage",
]

#: The schema, one SQL script per version; ``MIGRATIONS[n - 1]`` takes a database from
#: version ``n - 1`` to ``n``. Append new scripts, never edit an old one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema. Every query the Storage makes is answered by a primary key
    # or one of these indexes (tests/test_storage.py checks the query plans).
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE rooms (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE messages (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        kind TEXT NOT NULL,
        client_id TEXT,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_client_id ON messages (room, sender, client_id)
        WHERE client_id IS NOT NULL;

    CREATE TABLE dms (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text TEXT NOT NULL,
        client_id TEXT
    );
    CREATE UNIQUE INDEX dms_client_id ON dms (sender, client_id) WHERE client_id IS NOT NULL;
    CREATE INDEX dms_recipient ON dms (recipient, id);
    CREATE INDEX dms_sender ON dms (sender, id);

    -- Keyed room first: receipts(room) reads one room's rows, set_receipt one row.
    CREATE TABLE receipts (
        room TEXT NOT NULL,
        user TEXT NOT NULL,
        delivered INTEGER NOT NULL,
        seen INTEGER NOT NULL,
        PRIMARY KEY (room, user)
    ) WITHOUT ROWID;
    """,
    # 2: password accounts (chatd/accounts.py), kept apart from ``users``, which records every
    # name seen, guests of the ``open`` auth mode included. ``password`` is the whole
    # ``scrypt$n$r$p$salt$hash`` string; ``created`` is in milliseconds since the epoch.
    """
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        password TEXT NOT NULL,
        created INTEGER NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    """,
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)

#: The pending queue is written early (before the tick's ``commit``) at this many entries,
#: which bounds both its memory and the length of one transaction.
DEFAULT_MAX_PENDING = 10_000

#: The receipt statuses, in order: ``seen`` implies ``delivered``.
RECEIPT_STATUSES = ("delivered", "seen")

_SYNCHRONOUS_MODES = ("NORMAL", "FULL")
#: After a checkpoint, truncate the WAL file back to this size (bytes).
_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
_MEMORY = ":memory:"


class StorageError(Exception):
    """The database cannot be used: not a database, wrong mode, or a closed Storage."""


class SchemaVersionError(StorageError):
    """The database was written by a newer chatd than this one."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A room message with its place in the room (``seq``) and server timestamp (ms)."""

    room: str
    seq: int
    ts: int
    sender: str
    text: str
    kind: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class StoredDM:
    """A direct message; ``id`` increases across all DMs."""

    id: int
    ts: int
    sender: str
    recipient: str
    text: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A room as ``rooms()`` lists it."""

    name: str
    last_seq: int
    messages: int
    created: int


@dataclass(slots=True)
class _Room:
    """What the Storage keeps in memory about one room."""

    created: int
    #: the last seq assigned, pending included
    last_seq: int
    #: the last seq ``commit`` returned; reads of history stop here
    visible_seq: int
    #: whether ``commit`` has returned the room's creation (``rooms()`` lists it)
    visible: bool


@dataclass(slots=True)
class _Batch:
    """Writes queued for one transaction."""

    rooms: dict[str, int] = field(default_factory=dict)
    #: name -> (first seen, last seen) in this batch
    users: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: messages and DMs in the order they were added
    items: list[StoredMessage | StoredDM] = field(default_factory=list)
    messages: dict[tuple[str, str, str], StoredMessage] = field(default_factory=dict)
    dms: dict[tuple[str, str], StoredDM] = field(default_factory=dict)
    #: (room, user) -> [delivered, seen], the highest asked for in this batch
    receipts: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: how many of ``users`` were new to the database (known once written)
    new_users: int = 0

    def __len__(self) -> int:
        return len(self.rooms) + len(self.users) + len(self.items) + len(self.receipts)


class Storage:
    """The chat database, used from one thread.

    ``path`` is the SQLite file (its directory is created) or ``":memory:"``.
    ``synchronous`` is ``"NORMAL"`` or ``"FULL"`` (see the module docstring).
    ``max_pending`` bounds the pending queue: when it is full, the queue is written in a
    transaction of its own before the next write is queued; what that made durable is
    still returned by the next ``commit``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        self.path = os.fspath(path)
        self.synchronous = mode
        self.max_pending = max_pending
        if self.path not in (_MEMORY, ""):  # "": SQLite's private temporary database
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # It holds password hashes, every message and every DM: the owner's only.
            # SQLite gives its -wal and -shm files the database file's mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # isolation_level=None: no implicit transactions, every one is explicit below.
        # check_same_thread (the default): the event-loop thread is the only user.
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._configure(self._db)
            _migrate(self._db, self.path)
            self._load(self._db)
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # --- opening ---------------------------------------------------------------------------

    def _configure(self, db: sqlite3.Connection) -> None:
        try:
            (journal_mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        if journal_mode.lower() != "wal" and self.path != _MEMORY:
            raise StorageError(f"cannot put {self.path} in WAL mode (it is in {journal_mode})")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")

    def _load(self, db: sqlite3.Connection) -> None:
        """Read what the loop needs in memory: rooms with their last seq, the next DM id."""
        self._rooms: dict[str, _Room] = {}
        for name, created in db.execute("SELECT name, created FROM rooms").fetchall():
            (last,) = db.execute(
                "SELECT coalesce(max(seq), 0) FROM messages WHERE room = ?", (name,)
            ).fetchone()
            self._rooms[name] = _Room(created, last, last, visible=True)
        (last_dm_id,) = db.execute("SELECT coalesce(max(id), 0) FROM dms").fetchone()
        self._last_dm_id: int = last_dm_id
        self._visible_dm_id: int = self._last_dm_id
        (self._user_count,) = db.execute("SELECT count(*) FROM users").fetchone()
        self._batch = _Batch()
        #: batches written early (``max_pending``) that ``commit`` has not returned yet
        self._written: list[_Batch] = []

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Commit anything pending, then close the database. Closing twice is harmless.

        The connection is closed even if that last commit fails (its error is raised).
        """
        if self._db is None:
            return
        try:
            self.commit()
            self._db.execute("PRAGMA optimize")
        finally:
            self._db.close()
            self._db = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection, for tests and maintenance: chatd goes through the methods."""
        if self._db is None:
            raise StorageError(f"the storage for {self.path} is closed")
        return self._db

    # --- writes: queued now, written by commit() -------------------------------------------

    def ensure_room(self, room: str, ts: int) -> bool:
        """Create ``room`` (queued) unless it exists; True if it was created now."""
        if room in self._rooms:
            return False
        self._make_room()
        self._rooms[room] = _Room(ts, 0, 0, visible=False)
        self._batch.rooms[room] = ts
        return True

    def ensure_user(self, name: str, ts: int) -> None:
        """Record that ``name`` was seen at ``ts``: created if new, ``last_seen`` updated."""
        seen = self._batch.users.get(name)
        if seen is None:
            self._make_room()
            self._batch.users[name] = (ts, ts)
        else:
            self._batch.users[name] = (seen[0], max(seen[1], ts))

    def add_message(  # noqa: PLR0917 - the hub's call, positional like a row
        self, room: str, sender: str, text: str, kind: str, client_id: str | None, ts: int
    ) -> StoredMessage:
        """Queue a room message with the room's next ``seq``; the room is created if new.

        A ``client_id`` already used by ``sender`` in ``room`` is a ``ValueError``: look it
        up with ``find_message`` first (a resend is acknowledged, not stored again).
        """
        if client_id is not None and self.find_message(room, sender, client_id) is not None:
            raise ValueError(f"{sender} already sent {client_id!r} to {room}")
        self.ensure_room(room, ts)
        self._make_room()
        info = self._rooms[room]
        info.last_seq += 1
        message = StoredMessage(room, info.last_seq, ts, sender, text, kind, client_id)
        self._batch.items.append(message)
        if client_id is not None:
            self._batch.messages[room, sender, client_id] = message
        return message

    def add_dm(
        self, sender: str, recipient: str, text: str, client_id: str | None, ts: int
    ) -> StoredDM:
        """Queue a direct message with the next DM id.

        A ``client_id`` already used by ``sender`` for a DM is a ``ValueError`` (see
        ``find_dm``).
        """
        if client_id is not None and self.find_dm(sender, client_id) is not None:
            raise ValueError(f"{sender} already sent DM {client_id!r}")
        self._make_room()
        self._last_dm_id += 1
        dm = StoredDM(self._last_dm_id, ts, sender, recipient, text, client_id)
        self._batch.items.append(dm)
        if client_id is not None:
            self._batch.dms[sender, client_id] = dm
        return dm

    def add_replicated(self, item: StoredMessage | StoredDM) -> bool:
        """Queue a message or DM numbered elsewhere (the Redis bus: this file is a node's
        replica of the shared log). Records come in order: one already here is skipped
        (False); one after a gap is a ``ValueError``, since the replica would then answer
        history reads with a hole.
        """
        if isinstance(item, StoredMessage):
            self.ensure_room(item.room, item.ts)
            info = self._rooms[item.room]
            if item.seq <= info.last_seq:
                return False
            if item.seq != info.last_seq + 1:
                raise ValueError(f"{item.room}: seq {item.seq} after {info.last_seq}")
            self._make_room()
            info.last_seq = item.seq
            self._batch.items.append(item)
            if item.client_id is not None:
                self._batch.messages[item.room, item.sender, item.client_id] = item
            return True
        if item.id <= self._last_dm_id:
            return False
        if item.id != self._last_dm_id + 1:
            raise ValueError(f"DM {item.id} after {self._last_dm_id}")
        self._make_room()
        self._last_dm_id = item.id
        self._batch.items.append(item)
        if item.client_id is not None:
            self._batch.dms[item.sender, item.client_id] = item
        return True

    def last_seqs(self) -> dict[str, int]:
        """Every room's last seq, pending included (where a replica resumes the log)."""
        return {name: info.last_seq for name, info in self._rooms.items()}

    @property
    def last_dm_id(self) -> int:
        """The last DM id assigned or replicated, pending included."""
        return self._last_dm_id

    def visible_seq(self, room: str) -> int:
        """The last seq of ``room`` that ``commit`` has returned (delivered and readable)."""
        return self._visible_seq(room)

    @property
    def visible_dm_id(self) -> int:
        """The last DM id that ``commit`` has returned."""
        return self._visible_dm_id

    def set_receipt(self, user: str, room: str, seq: int, status: str) -> bool:
        """Record that ``user`` has had (``delivered``) or read (``seen``) ``room`` up to ``seq``.

        Receipts only move forward: the highest seq per (user, room, status) is kept, and
        ``seen`` also moves ``delivered`` (what was seen was delivered). Returns True if the
        given status advanced.
        """
        if status not in RECEIPT_STATUSES:
            raise ValueError(f"a receipt status is 'delivered' or 'seen', not {status!r}")
        key = (room, user)
        current = self._batch.receipts.get(key)
        if current is None:
            current = list(self._committed_receipt(room, user))
        index = RECEIPT_STATUSES.index(status)
        if seq <= current[index]:
            return False
        if key not in self._batch.receipts:
            self._make_room()
            self._batch.receipts[key] = current
        current[index] = seq
        current[0] = max(current[0], current[1])
        return True

    def _committed_receipt(self, room: str, user: str) -> tuple[int, int]:
        row = self.connection.execute(
            "SELECT delivered, seen FROM receipts WHERE room = ? AND user = ?", (room, user)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _make_room(self) -> None:
        """Before one more entry is queued: write the queue now if it is full."""
        if self._db is None:
            raise StorageError(f"the storage for {self.path} is closed")
        if len(self._batch) >= self.max_pending:
            self._write_batch()

    def _write_batch(self) -> None:
        """Write the queue in its own transaction; ``commit`` will return what it held."""
        self._write(self._batch)
        self._written.append(self._batch)
        self._batch = _Batch()

    @property
    def pending(self) -> int:
        """Writes not yet returned by ``commit`` (queued, or written early and not returned)."""
        return len(self._batch) + sum(len(batch) for batch in self._written)

    def commit(self) -> list[StoredMessage | StoredDM]:
        """Write everything queued in one transaction; return the messages and DMs made durable.

        They come in the order they were added, including any written early because the
        queue filled up. Nothing queued: returns ``[]`` without touching the database. If
        the transaction fails, it is rolled back, the queue is kept for the next
        ``commit`` and the error is raised.
        """
        if self._batch:
            self._write_batch()
        committed: list[StoredMessage | StoredDM] = []
        for batch in self._written:
            self._publish(batch)
            committed.extend(batch.items)
        self._written.clear()
        return committed

    def _write(self, batch: _Batch) -> None:
        """Write one batch in one transaction."""
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.rooms:
                db.executemany(
                    "INSERT OR IGNORE INTO rooms (name, created) VALUES (?, ?)",
                    batch.rooms.items(),
                )
            if batch.users:
                batch.new_users = db.executemany(
                    "INSERT OR IGNORE INTO users (name, created, last_seen) VALUES (?, ?, ?)",
                    ((name, first, last) for name, (first, last) in batch.users.items()),
                ).rowcount
                db.executemany(
                    "UPDATE users SET last_seen = max(last_seen, ?) WHERE name = ?",
                    ((last, name) for name, (_, last) in batch.users.items()),
                )
            db.executemany(
                "INSERT INTO messages (room, seq, ts, sender, text, kind, client_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                _message_rows(batch.items),
            )
            db.executemany(
                "INSERT INTO dms (id, ts, sender, recipient, text, client_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                _dm_rows(batch.items),
            )
            if batch.receipts:
                db.executemany(
                    "INSERT INTO receipts (room, user, delivered, seen) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (room, user) DO UPDATE SET"
                    " delivered = max(delivered, excluded.delivered),"
                    " seen = max(seen, excluded.seen)",
                    ((room, user, d, s) for (room, user), (d, s) in batch.receipts.items()),
                )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _publish(self, batch: _Batch) -> None:
        """Make a written batch visible to the history reads."""
        for name in batch.rooms:
            self._rooms[name].visible = True
        for item in batch.items:
            if isinstance(item, StoredMessage):
                self._rooms[item.room].visible_seq = item.seq
            else:
                self._visible_dm_id = item.id
        self._user_count += batch.new_users

    # --- reads -----------------------------------------------------------------------------

    def find_message(self, room: str, sender: str, client_id: str) -> StoredMessage | None:
        """The message ``sender`` sent to ``room`` with ``client_id``, pending or stored."""
        key = (room, sender, client_id)
        if key in self._batch.messages:
            return self._batch.messages[key]
        row = self.connection.execute(
            "SELECT room, seq, ts, sender, text, kind, client_id FROM messages"
            " WHERE room = ? AND sender = ? AND client_id = ?",
            key,
        ).fetchone()
        return StoredMessage(*row) if row else None

    def find_dm(self, sender: str, client_id: str) -> StoredDM | None:
        """The DM ``sender`` sent with ``client_id``, pending or stored."""
        key = (sender, client_id)
        if key in self._batch.dms:
            return self._batch.dms[key]
        row = self.connection.execute(
            "SELECT id, ts, sender, recipient, text, client_id FROM dms"
            " WHERE sender = ? AND client_id = ?",
            key,
        ).fetchone()
        return StoredDM(*row) if row else None

    def message_at(self, room: str, seq: int) -> StoredMessage | None:
        """The committed message ``seq`` of ``room``, if there is one."""
        found, _ = self.history(room, seq + 1, 1)
        return found[0] if found and found[0].seq == seq else None

    def dm_at(self, dm_id: int) -> StoredDM | None:
        """The committed DM ``dm_id``, if there is one."""
        if dm_id > self._visible_dm_id:
            return None
        row = self.connection.execute(
            "SELECT id, ts, sender, recipient, text, client_id FROM dms WHERE id = ?", (dm_id,)
        ).fetchone()
        return StoredDM(*row) if row else None

    def last_seq(self, room: str) -> int:
        """The last ``seq`` assigned in ``room``, pending included (0 for none)."""
        info = self._rooms.get(room)
        return info.last_seq if info else 0

    def recent(self, room: str, limit: int = 50) -> list[StoredMessage]:
        """The newest ``limit`` committed messages of ``room``, oldest first."""
        return self.history(room, None, limit)[0]

    def history(
        self, room: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """Up to ``limit`` committed messages with ``seq < before`` (the newest if None).

        Oldest first, and whether older ones exist (``has_more``).
        """
        _check_limit(limit)
        end = self._visible_seq(room)
        if before is not None:
            end = min(end, before - 1)
        rows = self.connection.execute(
            "SELECT room, seq, ts, sender, text, kind, client_id FROM messages"
            " WHERE room = ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
            (room, end, limit + 1),
        ).fetchall()
        has_more = len(rows) > limit
        return [StoredMessage(*row) for row in reversed(rows[:limit])], has_more

    def after(self, room: str, seq: int, limit: int) -> tuple[list[StoredMessage], bool]:
        """Up to ``limit`` committed messages with ``seq`` greater than the given one.

        Oldest first, and whether newer ones exist (``has_more``): resume from the last
        message returned.
        """
        _check_limit(limit)
        rows = self.connection.execute(
            "SELECT room, seq, ts, sender, text, kind, client_id FROM messages"
            " WHERE room = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (room, seq, self._visible_seq(room), limit + 1),
        ).fetchall()
        return [StoredMessage(*row) for row in rows[:limit]], len(rows) > limit

    def dms_for(self, user: str, limit: int = 50) -> list[StoredDM]:
        """The newest ``limit`` committed DMs to or from ``user``, oldest first."""
        _check_limit(limit)
        end = self._visible_dm_id
        # Two index range scans (sender, id) and (recipient, id), each already limited;
        # UNION also drops the duplicate of a DM to oneself.
        rows = self.connection.execute(
            "SELECT * FROM (SELECT id, ts, sender, recipient, text, client_id FROM dms"
            "  WHERE sender = ? AND id <= ? ORDER BY id DESC LIMIT ?)"
            " UNION"
            " SELECT * FROM (SELECT id, ts, sender, recipient, text, client_id FROM dms"
            "  WHERE recipient = ? AND id <= ? ORDER BY id DESC LIMIT ?)"
            " ORDER BY id DESC LIMIT ?",
            (user, end, limit, user, end, limit, limit),
        ).fetchall()
        return [StoredDM(*row) for row in reversed(rows)]

    def rooms(self) -> list[RoomInfo]:
        """Every committed room, by name (from memory: no query)."""
        # Messages are never deleted and seqs have no gaps, so a room's count is its seq.
        return [
            RoomInfo(name, info.visible_seq, info.visible_seq, info.created)
            for name, info in sorted(self._rooms.items())
            if info.visible
        ]

    def receipts(self, room: str) -> dict[str, tuple[int, int]]:
        """user -> (delivered seq, seen seq) in ``room``, pending included."""
        result = {
            user: (delivered, seen)
            for user, delivered, seen in self.connection.execute(
                "SELECT user, delivered, seen FROM receipts WHERE room = ?", (room,)
            )
        }
        for (receipt_room, user), (delivered, seen) in self._batch.receipts.items():
            if receipt_room == room:
                result[user] = (delivered, seen)
        return result

    def counts(self) -> dict[str, int]:
        """How many committed messages, DMs, rooms and users there are (from memory)."""
        rooms = [info for info in self._rooms.values() if info.visible]
        return {
            "messages": sum(info.visible_seq for info in rooms),
            "dms": self._visible_dm_id,
            "rooms": len(rooms),
            "users": self._user_count,
        }

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return _schema_version(self.connection)

    def _visible_seq(self, room: str) -> int:
        info = self._rooms.get(room)
        return info.visible_seq if info else 0


# --- helpers ---------------------------------------------------------------------------------


def _message_rows(
    items: Iterable[StoredMessage | StoredDM],
) -> Iterator[tuple[str, int, int, str, str, str, str | None]]:
    for item in items:
        if isinstance(item, StoredMessage):
            yield item.room, item.seq, item.ts, item.sender, item.text, item.kind, item.client_id


def _dm_rows(
    items: Iterable[StoredMessage | StoredDM],
) -> Iterator[tuple[int, int, str, str, str, str | None]]:
    for item in items:
        if isinstance(item, StoredDM):
            yield item.id, item.ts, item.sender, item.recipient, item.text, item.client_id


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")


def _schema_version(db: sqlite3.Connection) -> int:
    """The highest migration recorded (0 for a new database)."""
    if not db.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone():
        return 0
    (version,) = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(version)


def _migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the schema to ``SCHEMA_VERSION``, one transaction per migration.

    Each transaction re-reads the version under the write lock, so two processes opening
    a new file at once apply each migration once.
    """
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(db)
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{path} has schema version {version}, but this chatd knows versions up"
                    f" to {SCHEMA_VERSION}: it was written by a newer chatd; upgrade chatd"
                    " or point it at another database file"
                )
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)"
            )
            for statement in _statements(MIGRATIONS[version]):
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                (version + 1, time.time_ns() // 1_000_000),
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``executescript`` would commit early)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
    if statement.strip():
        yield statement.strip()  # incomplete: let SQLite say what is wrong with it


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back after an error, unless SQLite already did (it may, e.g. on a full disk)."""
    if db.in_transaction:
        db.execute("ROLLBACK")
