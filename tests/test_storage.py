"""chatd.storage against real SQLite files in a temporary directory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd import storage as storage_module
from chatd.storage import (
    SCHEMA_VERSION,
    RoomInfo,
    SchemaVersionError,
    Storage,
    StorageError,
    StoredDM,
    StoredMessage,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "chatd.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[Storage]:
    with Storage(path) as opened:
        yield opened


def reader(path: Path) -> sqlite3.Connection:
    """A second, independent connection to the same file."""
    return sqlite3.connect(path, isolation_level=None)


def count(path: Path, table: str) -> int:
    with reader(path) as db:
        (n,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


def say(store: Storage, room: str, text: str, client_id: str | None = None) -> StoredMessage:
    return store.add_message(room, "alice", text, "text", client_id, 1000)


def fill(store: Storage, room: str, n: int) -> None:
    for i in range(n):
        say(store, room, f"m{i + 1}")
    store.commit()


# --- opening: WAL, pragmas, schema -------------------------------------------------------------


def test_wal_mode_and_synchronous_normal_by_default(store: Storage, path: Path) -> None:
    with reader(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store.connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert store.synchronous == "NORMAL"
    assert store.connection.isolation_level is None


def test_synchronous_full(path: Path) -> None:
    with Storage(path, synchronous="full") as store:
        assert store.connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert store.synchronous == "FULL"


@pytest.mark.parametrize("options", [{"synchronous": "OFF"}, {"max_pending": 0}])
def test_bad_options(path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Storage(path, **options)  # type: ignore[arg-type]
    assert not path.exists()


def test_creates_the_directory_and_records_the_schema_version(store: Storage, path: Path) -> None:
    assert path.parent.is_dir()
    assert store.schema_version() == SCHEMA_VERSION == 2
    with reader(path) as db:
        rows = db.execute("SELECT version, applied FROM schema_version").fetchall()
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_schema")}
    assert [version for version, _ in rows] == [1, 2]
    assert rows[0][1] > 1_600_000_000_000  # milliseconds since the epoch
    assert {"users", "rooms", "messages", "dms", "receipts", "accounts", "schema_version"} <= tables


def test_reopening_does_not_migrate_again(path: Path) -> None:
    Storage(path).close()
    Storage(path).close()
    assert count(path, "schema_version") == SCHEMA_VERSION


def test_a_newer_schema_is_refused(path: Path) -> None:
    Storage(path).close()
    with reader(path) as db:
        db.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*up to 2.*newer chatd"):
        Storage(path)
    # Nothing was left locked or half done: the file still opens with a compatible schema.
    with reader(path) as db:
        db.execute("DELETE FROM schema_version WHERE version = 99")
    Storage(path).close()


def test_migrations_apply_in_order_each_in_one_transaction(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Storage(path).close()
    second = "CREATE TABLE extra (x INTEGER); -- a comment\nCREATE INDEX extra_x ON extra (x);"
    broken = "CREATE TABLE half (x INTEGER);\nCREATE TABLE half (x INTEGER);"
    monkeypatch.setattr(storage_module, "MIGRATIONS", (*storage_module.MIGRATIONS, second, broken))
    monkeypatch.setattr(storage_module, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        Storage(path)
    with reader(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY 1")]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_schema")}
    # The added migration is in, the broken one after it left nothing behind.
    assert versions == [*range(1, SCHEMA_VERSION + 2)]
    assert "extra_x" in tables
    assert "half" not in tables


def test_migration_scripts_split_into_statements() -> None:
    script = "CREATE TABLE a (x);\n  -- note; with a semicolon\nCREATE TABLE b (y);\n  \n"
    assert list(storage_module._statements(script)) == [
        "CREATE TABLE a (x);",
        "-- note; with a semicolon\nCREATE TABLE b (y);",
    ]
    # An unfinished statement is passed on for SQLite to reject with its own message.
    assert list(storage_module._statements("SELECT 1;\nSELECT (2")) == ["SELECT 1;", "SELECT (2"]


def test_rollback_only_when_a_transaction_is_open(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    storage_module._rollback(db)  # SQLite already rolled back: nothing to do
    db.execute("BEGIN IMMEDIATE")
    storage_module._rollback(db)
    assert not db.in_transaction
    db.close()


def test_not_a_database(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, not even a little" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        Storage(path)


def test_a_database_without_wal_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # "" is SQLite's private temporary database, which cannot be in WAL mode.
    with pytest.raises(StorageError, match="WAL mode"):
        Storage("")


def test_in_memory_for_quick_tests() -> None:
    with Storage(":memory:") as store:
        say(store, "lobby", "hi")
        assert [m.text for m in store.commit()] == ["hi"]
        assert [m.text for m in store.recent("lobby")] == ["hi"]


def test_one_thread_only(store: Storage) -> None:
    errors: list[BaseException] = []

    def use() -> None:
        try:
            store.connection.execute("SELECT 1")
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(errors) == 1


def test_closed(path: Path) -> None:
    store = Storage(path)
    store.close()
    store.close()  # twice is harmless
    with pytest.raises(StorageError, match="closed"):
        say(store, "lobby", "too late")
    with pytest.raises(StorageError, match="closed"):
        _ = store.connection
    assert store.commit() == []


def test_close_commits_what_is_pending(path: Path) -> None:
    store = Storage(path)
    say(store, "lobby", "last words")
    store.add_dm("alice", "bob", "bye", None, 5)
    store.close()
    with Storage(path) as reopened:
        assert [m.text for m in reopened.recent("lobby")] == ["last words"]
        assert [d.text for d in reopened.dms_for("bob")] == ["bye"]


def test_close_closes_even_if_the_commit_fails(path: Path) -> None:
    store = Storage(path)
    say(store, "lobby", "one")
    with reader(path) as db:
        db.execute("INSERT INTO messages VALUES ('lobby', 1, 0, 'mallory', 'x', 'text', NULL)")
    with pytest.raises(sqlite3.IntegrityError):
        store.close()
    with pytest.raises(StorageError, match="closed"):
        _ = store.connection


# --- writes, pending and commit ----------------------------------------------------------------


def test_seq_increases_per_room_independently(store: Storage) -> None:
    seqs = [(m.room, m.seq) for m in (say(store, r, "x") for r in "aabab")]
    assert seqs == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]
    store.commit()
    assert say(store, "b", "y").seq == 3
    assert store.last_seq("a") == 3
    assert store.last_seq("b") == 3
    assert store.last_seq("nowhere") == 0


def test_add_message_returns_what_is_stored(store: Storage) -> None:
    message = store.add_message("lobby", "alice", "waves", "me", "c1", 1234)
    assert message == StoredMessage("lobby", 1, 1234, "alice", "waves", "me", "c1")
    store.commit()
    assert store.recent("lobby") == [message]


def test_pending_writes_are_seen_by_seq_and_dedupe_but_not_by_history(
    store: Storage, path: Path
) -> None:
    assert store.pending == 0
    message = say(store, "lobby", "hello", "c1")
    dm = store.add_dm("alice", "bob", "psst", "d1", 7)
    assert store.pending == 3  # the room, the message and the DM
    assert store.last_seq("lobby") == 1
    assert store.find_message("lobby", "alice", "c1") == message
    assert store.find_dm("alice", "d1") == dm
    assert store.recent("lobby") == []
    assert store.history("lobby", None, 10) == ([], False)
    assert store.after("lobby", 0, 10) == ([], False)
    assert store.dms_for("bob") == []
    assert store.rooms() == []
    assert store.counts() == {"messages": 0, "dms": 0, "rooms": 0, "users": 0}
    assert count(path, "messages") == 0  # nothing is written before commit

    assert store.commit() == [message, dm]
    assert store.pending == 0
    assert store.recent("lobby") == [message]
    assert store.dms_for("bob") == [dm]
    assert store.rooms() == [RoomInfo("lobby", 1, 1, 1000)]
    assert count(path, "messages") == 1


def test_commit_returns_items_in_order_and_then_nothing(store: Storage) -> None:
    added: list[StoredMessage | StoredDM] = [
        say(store, "a", "1"),
        store.add_dm("alice", "bob", "2", None, 1),
        say(store, "b", "3"),
        say(store, "a", "4"),
        store.add_dm("bob", "alice", "5", None, 2),
    ]
    assert store.commit() == added
    assert store.commit() == []


def test_an_empty_commit_does_not_touch_the_database(store: Storage) -> None:
    statements: list[str] = []
    store.connection.set_trace_callback(statements.append)
    assert store.commit() == []
    assert statements == []


def test_a_commit_is_one_transaction(store: Storage, path: Path) -> None:
    store.ensure_user("alice", 1)
    store.ensure_room("lobby", 1)
    for i in range(20):
        say(store, "lobby", f"m{i}")
        store.add_dm("alice", "bob", f"d{i}", None, 1)
    store.set_receipt("alice", "lobby", 3, "seen")
    other = reader(path)
    statements: list[str] = []
    seen_meanwhile: list[int] = []

    def trace(statement: str) -> None:
        statements.append(statement)
        # While the transaction is open, another connection sees none of it.
        (messages,) = other.execute("SELECT count(*) FROM messages").fetchone()
        seen_meanwhile.append(messages)

    store.connection.set_trace_callback(trace)
    store.commit()
    store.connection.set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE"
    assert statements[-1] == "COMMIT"
    assert not [s for s in statements[1:-1] if s.split()[0] in {"BEGIN", "COMMIT", "ROLLBACK"}]
    assert any(s.startswith("INSERT INTO dms") for s in statements)  # after the messages
    assert set(seen_meanwhile) == {0}
    assert other.execute("SELECT count(*) FROM messages").fetchone() == (20,)
    assert other.execute("SELECT count(*) FROM dms").fetchone() == (20,)
    assert other.execute("SELECT count(*) FROM receipts").fetchone() == (1,)
    other.close()


def test_a_failed_commit_rolls_back_everything_and_keeps_the_queue(
    store: Storage, path: Path
) -> None:
    store.ensure_user("alice", 1)
    first = say(store, "r", "one")
    second = say(store, "r", "two")
    store.set_receipt("alice", "r", 1, "delivered")
    with reader(path) as db:
        db.execute("INSERT INTO messages VALUES ('r', 2, 0, 'mallory', 'squatter', 'text', NULL)")
    pending = store.pending
    with pytest.raises(sqlite3.IntegrityError):
        store.commit()
    assert not store.connection.in_transaction
    assert store.pending == pending
    assert count(path, "rooms") == 0  # the rows before the failing one were rolled back
    assert count(path, "users") == 0
    assert count(path, "receipts") == 0
    assert store.recent("r") == []
    with reader(path) as db:
        db.execute("DELETE FROM messages WHERE sender = 'mallory'")
    assert store.commit() == [first, second]  # the same items, same seqs, on the retry
    assert [m.text for m in store.recent("r")] == ["one", "two"]
    assert store.counts()["users"] == 1


def test_a_full_queue_is_written_early_and_returned_by_the_next_commit(
    path: Path,
) -> None:
    with Storage(path, max_pending=3) as store:
        added = [say(store, "lobby", f"m{i}", f"c{i}") for i in range(5)]
        # The room and m0, m1 filled the queue: m2 wrote them before it was queued.
        assert count(path, "messages") == 2
        assert store.pending == 6
        # Written, but not returned by commit yet: the history reads do not show them...
        assert store.recent("lobby") == []
        assert store.rooms() == []
        # ...and de-duplication does.
        assert store.find_message("lobby", "alice", "c0") == added[0]
        with pytest.raises(ValueError, match="already sent"):
            say(store, "lobby", "again", "c0")
        assert store.commit() == added
        assert store.pending == 0
        assert store.recent("lobby") == added
        assert store.counts()["messages"] == 5


def test_an_early_write_that_fails_queues_nothing_new(path: Path) -> None:
    with Storage(path, max_pending=1) as store:
        store.ensure_room("lobby", 1)
        store.commit()
        first = say(store, "lobby", "one")
        with reader(path) as db:
            db.execute("INSERT INTO messages VALUES ('lobby', 1, 0, 'm', 'x', 'text', NULL)")
        with pytest.raises(sqlite3.IntegrityError):
            say(store, "lobby", "two")
        assert store.last_seq("lobby") == 1
        with reader(path) as db:
            db.execute("DELETE FROM messages")
        assert store.commit() == [first]


def test_commit_after_an_early_write_with_nothing_new(path: Path) -> None:
    with Storage(path, max_pending=1) as store:
        store.ensure_room("lobby", 1)
        store.ensure_user("alice", 1)  # writes the room early
        store.commit()
        assert store.pending == 0
        store.ensure_room("a", 1)
        store.ensure_room("b", 1)  # writes "a" early; "b" is queued
        store.commit()
        assert store.commit() == []
        assert [room.name for room in store.rooms()] == ["a", "b", "lobby"]


# --- restart -----------------------------------------------------------------------------------


def test_everything_survives_a_restart(path: Path) -> None:
    with Storage(path) as store:
        store.ensure_user("alice", 1)
        store.ensure_user("bob", 2)
        fill(store, "lobby", 3)
        fill(store, "dev", 2)
        store.add_dm("alice", "bob", "hi bob", "d1", 10)
        store.add_dm("bob", "alice", "hi alice", None, 11)
        store.set_receipt("bob", "lobby", 3, "delivered")
        store.set_receipt("bob", "lobby", 2, "seen")
        store.commit()
        before = (store.rooms(), store.counts(), store.recent("lobby"), store.dms_for("alice"))

    with Storage(path) as store:
        assert (store.rooms(), store.counts(), store.recent("lobby"), store.dms_for("alice")) == (
            before
        )
        assert store.receipts("lobby") == {"bob": (3, 2)}
        assert store.last_seq("lobby") == 3
        assert say(store, "lobby", "after").seq == 4  # seq continues
        assert say(store, "dev", "after").seq == 3
        assert store.add_dm("alice", "bob", "again", None, 12).id == 3  # DM ids continue
        assert store.find_dm("alice", "d1") == StoredDM(1, 10, "alice", "bob", "hi bob", "d1")
        assert store.ensure_room("lobby", 99) is False
        store.commit()
        assert store.counts() == {"messages": 7, "dms": 3, "rooms": 2, "users": 2}


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from chatd.storage import Storage

    store = Storage(sys.argv[1])
    i = 0
    while True:
        i += 1
        store.add_message("lobby", "alice", f"m{i}", "text", f"c{i}", i)
        store.add_dm("alice", "bob", f"d{i}", None, i)
        for item in store.commit():  # acknowledged only once committed
            number = item.seq if type(item).__name__ == "StoredMessage" else item.id
            print(type(item).__name__, number, flush=True)
    """
)


def test_acknowledged_writes_survive_sigkill(path: Path, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(CRASH_SCRIPT)
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: dict[str, list[int]] = {"StoredMessage": [], "StoredDM": []}
    try:
        assert child.stdout is not None
        for line in child.stdout:
            kind, number = line.split()
            acked[kind].append(int(number))
            if len(acked["StoredDM"]) == 200:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # killed with a WAL that was never checkpointed

    with Storage(path) as store:
        last = store.last_seq("lobby")
        assert last >= acked["StoredMessage"][-1]
        messages, has_more = store.history("lobby", None, 1000)
        assert not has_more
        # Every acknowledged message is there, and seqs have no gaps.
        assert [m.seq for m in messages] == list(range(1, last + 1))
        assert set(acked["StoredMessage"]) <= {m.seq for m in messages}
        assert all(m.text == f"m{m.seq}" for m in messages)
        dms = store.dms_for("bob", 1000)
        assert set(acked["StoredDM"]) <= {d.id for d in dms}
        assert say(store, "lobby", "after the crash").seq == last + 1


# --- de-duplication ---------------------------------------------------------------------------


def test_dedupe_room_messages_pending_committed_and_after_restart(path: Path) -> None:
    with Storage(path) as store:
        original = say(store, "lobby", "hello", "c1")
        assert store.find_message("lobby", "alice", "c1") == original
        with pytest.raises(ValueError, match="already sent"):
            say(store, "lobby", "hello again", "c1")
        store.commit()
        assert store.find_message("lobby", "alice", "c1") == original
        with pytest.raises(ValueError, match="already sent"):
            say(store, "lobby", "hello again", "c1")
        # The key is (room, sender, client id): other rooms and senders are free to reuse it.
        assert store.find_message("dev", "alice", "c1") is None
        assert store.find_message("lobby", "bob", "c1") is None
        say(store, "dev", "elsewhere", "c1")
        store.add_message("lobby", "bob", "someone else", "text", "c1", 1)
        # Without a client id nothing is de-duplicated.
        say(store, "lobby", "same")
        say(store, "lobby", "same")
        store.commit()
        assert store.last_seq("lobby") == 4
    with Storage(path) as store:
        assert store.find_message("lobby", "alice", "c1") == original
        assert store.find_message("lobby", "alice", "c2") is None
        with pytest.raises(ValueError, match="already sent"):
            say(store, "lobby", "hello after restart", "c1")


def test_dedupe_dms_pending_committed_and_after_restart(path: Path) -> None:
    with Storage(path) as store:
        original = store.add_dm("alice", "bob", "hi", "d1", 5)
        assert store.find_dm("alice", "d1") == original
        with pytest.raises(ValueError, match="already sent DM"):
            store.add_dm("alice", "carol", "hi", "d1", 6)
        store.commit()
        assert store.find_dm("alice", "d1") == original
        assert store.find_dm("bob", "d1") is None
        store.add_dm("bob", "alice", "hi", "d1", 6)
        store.add_dm("alice", "bob", "no id", None, 7)
        store.add_dm("alice", "bob", "no id", None, 7)
    with Storage(path) as store:
        assert store.find_dm("alice", "d1") == original
        with pytest.raises(ValueError, match="already sent DM"):
            store.add_dm("alice", "bob", "hi", "d1", 8)
        assert store.counts()["dms"] == 4


# --- reading history ----------------------------------------------------------------------------


def test_recent(store: Storage) -> None:
    assert store.recent("lobby") == []
    fill(store, "lobby", 60)
    assert [m.seq for m in store.recent("lobby")] == list(range(11, 61))
    assert [m.seq for m in store.recent("lobby", 3)] == [58, 59, 60]
    assert store.recent("lobby", 0) == []


@pytest.mark.parametrize("limit", [1, 2, 3, 49, 50, 51, 124, 125, 199, 200, 250, 251])
def test_history_pages_back_to_the_first_message(limit: int, path: Path) -> None:
    with Storage(path) as store:
        fill(store, "lobby", 250)
        fill(store, "other", 5)
        seen: list[int] = []
        before: int | None = None
        while True:
            page, has_more = store.history("lobby", before, limit)
            seqs = [m.seq for m in page]
            assert seqs == sorted(seqs)
            assert len(page) == min(limit, (before or 251) - 1)
            assert has_more == (seqs[0] > 1)  # exact: never a last, empty page
            seen = seqs + seen
            if not has_more:
                break
            before = seqs[0]
        assert seen == list(range(1, 251))
        assert {m.room for m in store.recent("lobby", 200)} == {"lobby"}


def test_history_boundaries(store: Storage) -> None:
    fill(store, "lobby", 10)

    def seqs(before: int | None, limit: int) -> tuple[list[int], bool]:
        page, has_more = store.history("lobby", before, limit)
        return [m.seq for m in page], has_more

    assert seqs(None, 3) == ([8, 9, 10], True)
    assert seqs(10_000, 3) == ([8, 9, 10], True)  # before beyond the end: the newest
    assert seqs(11, 3) == ([8, 9, 10], True)
    assert seqs(10, 3) == ([7, 8, 9], True)
    assert seqs(4, 3) == ([1, 2, 3], False)
    assert seqs(5, 3) == ([2, 3, 4], True)
    assert seqs(2, 3) == ([1], False)
    assert seqs(1, 3) == ([], False)
    assert seqs(0, 3) == ([], False)
    assert seqs(-5, 3) == ([], False)
    assert seqs(None, 10) == (list(range(1, 11)), False)
    assert seqs(None, 0) == ([], True)
    assert store.history("empty", None, 5) == ([], False)
    with pytest.raises(ValueError, match="negative"):
        store.history("lobby", None, -1)


def test_after_resumes_with_has_more(store: Storage) -> None:
    fill(store, "lobby", 10)
    fill(store, "other", 3)

    def seqs(after: int, limit: int) -> tuple[list[int], bool]:
        page, has_more = store.after("lobby", after, limit)
        return [m.seq for m in page], has_more

    assert seqs(0, 4) == ([1, 2, 3, 4], True)
    assert seqs(4, 4) == ([5, 6, 7, 8], True)
    assert seqs(8, 4) == ([9, 10], False)
    assert seqs(6, 4) == ([7, 8, 9, 10], False)  # exactly the rest: no more
    assert seqs(10, 4) == ([], False)
    assert seqs(99, 4) == ([], False)
    assert seqs(-1, 100) == (list(range(1, 11)), False)
    say(store, "lobby", "pending")
    assert seqs(10, 4) == ([], False)  # not before it is committed
    store.commit()
    assert seqs(10, 4) == ([11], False)
    assert store.after("nowhere", 0, 5) == ([], False)
    with pytest.raises(ValueError, match="negative"):
        store.after("lobby", 0, -1)


def test_dms_for(store: Storage) -> None:
    to_bob = store.add_dm("alice", "bob", "1", None, 1)
    store.add_dm("carol", "dave", "not ours", None, 2)
    from_bob = store.add_dm("bob", "carol", "3", None, 3)
    note = store.add_dm("bob", "bob", "note to self", None, 4)
    assert store.dms_for("bob") == []
    store.commit()
    later = store.add_dm("alice", "bob", "pending", None, 5)
    assert store.dms_for("bob") == [to_bob, from_bob, note]  # a DM to oneself once
    assert store.dms_for("bob", 2) == [from_bob, note]
    assert store.dms_for("bob", 0) == []
    assert store.dms_for("nobody") == []
    store.commit()
    assert store.dms_for("bob", 2) == [note, later]
    assert [d.text for d in store.dms_for("dave")] == ["not ours"]
    with pytest.raises(ValueError, match="negative"):
        store.dms_for("bob", -1)


# --- receipts --------------------------------------------------------------------------------


def test_receipts_keep_the_highest_and_report_advancement(store: Storage, path: Path) -> None:
    assert store.set_receipt("bob", "lobby", 3, "delivered") is True
    assert store.set_receipt("bob", "lobby", 3, "delivered") is False
    assert store.set_receipt("bob", "lobby", 2, "delivered") is False
    assert store.set_receipt("bob", "lobby", 5, "delivered") is True
    assert store.set_receipt("bob", "lobby", 4, "seen") is True
    assert store.receipts("lobby") == {"bob": (5, 4)}  # pending receipts count
    store.commit()
    assert store.receipts("lobby") == {"bob": (5, 4)}
    assert store.set_receipt("bob", "lobby", 4, "seen") is False  # committed values count
    assert store.set_receipt("bob", "lobby", 1, "delivered") is False
    assert store.pending == 0
    # "seen" implies "delivered".
    assert store.set_receipt("bob", "lobby", 7, "seen") is True
    assert store.receipts("lobby") == {"bob": (7, 7)}
    assert store.set_receipt("bob", "lobby", 6, "delivered") is False
    assert store.set_receipt("carol", "lobby", 1, "seen") is True
    assert store.set_receipt("carol", "dev", 9, "delivered") is True
    assert store.receipts("lobby") == {"bob": (7, 7), "carol": (1, 1)}
    assert store.receipts("dev") == {"carol": (9, 0)}
    assert store.receipts("nowhere") == {}
    store.commit()
    with reader(path) as db:
        rows = db.execute("SELECT room, user, delivered, seen FROM receipts ORDER BY 1, 2")
        assert rows.fetchall() == [
            ("dev", "carol", 9, 0),
            ("lobby", "bob", 7, 7),
            ("lobby", "carol", 1, 1),
        ]
    with pytest.raises(ValueError, match="'delivered' or 'seen'"):
        store.set_receipt("bob", "lobby", 9, "read")


def test_receipts_never_go_back_in_the_database(store: Storage, path: Path) -> None:
    store.set_receipt("bob", "lobby", 5, "seen")
    store.commit()
    with reader(path) as db:  # an older value queued elsewhere cannot lower it
        db.execute("UPDATE receipts SET delivered = 9, seen = 8")
    store.set_receipt("bob", "lobby", 6, "seen")
    store.commit()
    assert store.receipts("lobby") == {"bob": (9, 8)}


# --- rooms, users, counts -------------------------------------------------------------------------


def test_rooms_and_counts(store: Storage) -> None:
    assert store.ensure_room("lobby", 100) is True
    assert store.ensure_room("lobby", 200) is False
    assert store.ensure_room("dev", 300) is True
    fill(store, "dev", 2)
    say(store, "zeta", "a room made by its first message")
    store.add_dm("alice", "bob", "x", None, 1)
    store.commit()
    assert store.rooms() == [
        RoomInfo("dev", 2, 2, 300),
        RoomInfo("lobby", 0, 0, 100),
        RoomInfo("zeta", 1, 1, 1000),
    ]
    assert store.counts() == {"messages": 3, "dms": 1, "rooms": 3, "users": 0}


def test_users_are_created_once_and_last_seen_moves(store: Storage, path: Path) -> None:
    store.ensure_user("alice", 100)
    store.ensure_user("alice", 150)
    store.ensure_user("bob", 120)
    store.commit()
    assert store.counts()["users"] == 2
    store.ensure_user("alice", 300)
    store.ensure_user("carol", 310)
    store.commit()
    assert store.counts()["users"] == 3
    store.ensure_user("bob", 50)  # a clock that went back does not move last_seen back
    store.commit()
    with reader(path) as db:
        rows = db.execute("SELECT name, created, last_seen FROM users ORDER BY name").fetchall()
    assert rows == [("alice", 100, 300), ("bob", 120, 120), ("carol", 310, 310)]


# --- every query on the event loop is answered by an index ----------------------------------------


def test_every_query_uses_an_index(store: Storage) -> None:
    fill(store, "lobby", 5)
    store.add_dm("alice", "bob", "x", "d1", 1)
    store.set_receipt("bob", "lobby", 1, "seen")
    store.commit()
    statements: list[str] = []
    store.connection.set_trace_callback(statements.append)
    store.find_message("lobby", "alice", "c9")
    store.find_dm("alice", "d9")
    store.set_receipt("bob", "lobby", 2, "seen")
    store.recent("lobby")
    store.history("lobby", 3, 2)
    store.after("lobby", 2, 2)
    store.dms_for("bob")
    store.receipts("lobby")
    say(store, "lobby", "x", "c1")
    store.ensure_user("alice", 1)
    store.commit()
    store.connection.set_trace_callback(None)
    queries = [s for s in statements if s.split()[0] in {"SELECT", "INSERT", "UPDATE"}]
    assert len(queries) >= 12
    for query in queries:
        plan = " / ".join(row[3] for row in store.connection.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert "SCAN" not in plan.replace("SCAN (subquery", "").replace("SCAN CONSTANT", ""), (
            query,
            plan,
        )
