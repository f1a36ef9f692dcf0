"""chatd.accounts: scrypt hashes, the accounts table in a real SQLite file, ``chatd user``."""

from __future__ import annotations

import base64
import getpass
import hashlib
import io
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatd import accounts as accounts_module
from chatd.accounts import (
    MAX_PASSWORD,
    AccountError,
    AccountInfo,
    Accounts,
    check_password,
    hash_password,
    user_command,
    verify_password,
)
from chatd.storage import MIGRATIONS, SCHEMA_VERSION, Storage


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "chatd.sqlite3"


@pytest.fixture
def storage(path: Path) -> Iterator[Storage]:
    with Storage(path) as opened:
        yield opened


@pytest.fixture
def accounts(storage: Storage) -> Accounts:
    return Accounts(storage.connection, clock=lambda: 1_700_000_000.5)


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count hashlib.scrypt calls (each records its ``n``)."""
    calls: list[int] = []
    real: Callable[..., bytes] = hashlib.scrypt

    def counting(password: bytes, **kwargs: Any) -> bytes:
        calls.append(kwargs["n"])
        return real(password, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


class NotATty(io.StringIO):
    """stdin as a pipe: no TTY, so the password is one line of it."""


# --- hashes ------------------------------------------------------------------------------------


def test_hash_format_and_verify() -> None:
    stored = hash_password("correct horse")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(digest, validate=True)) == 32
    assert verify_password("correct horse", stored)
    # RFC 7914: the hash is scrypt over the UTF-8 password with the stored salt.
    expected = hashlib.scrypt(
        b"correct horse", salt=base64.b64decode(salt), n=2**14, r=8, p=1, dklen=32, maxmem=2**26
    )
    assert base64.b64decode(digest) == expected


def test_a_new_salt_every_time() -> None:
    first, second = hash_password("same password"), hash_password("same password")
    assert first != second
    assert verify_password("same password", first)
    assert verify_password("same password", second)


def test_wrong_password() -> None:
    stored = hash_password("correct horse")
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)
    assert not verify_password("x" * (MAX_PASSWORD + 1), stored)


def test_the_password_is_compared_after_nfc_normalization() -> None:
    stored = hash_password("caf\u00e9 au lait")  # é as one code point
    assert verify_password("cafe\u0301 au lait", stored)  # e + combining acute accent


def test_parameters_come_from_the_stored_string() -> None:
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"cheap password", salt=salt, n=2**4, r=2, p=3, dklen=24)
    stored = accounts_module._format(16, 2, 3, salt, digest)
    assert verify_password("cheap password", stored)
    assert not verify_password("cheap passwort", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "junk",
        "scrypt$16384$8$1$c2FsdA==",  # a field missing
        "bcrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$x$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$-16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$\u00b2$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # a digit int() refuses
        "scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # n not a power of 2
        "scrypt$1073741824$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # n far too big
        "scrypt$16384$0$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$99$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$1$not base64!$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaA==",  # hash too short
        "scrypt$16384$8$1$$aGFzaGhhc2hoYXNoaGFzaA==",  # no salt
        "scrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==$extra",
        "scrypt$" + "9" * 5000 + "$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
    ],
)
def test_a_malformed_stored_hash_is_false(stored: str) -> None:
    assert verify_password("correct horse", stored) is False


def test_a_password_that_is_not_text_is_false_not_an_error() -> None:
    stored = hash_password("correct horse")
    assert verify_password("\ud800 lone surrogate", stored) is False
    with pytest.raises(AccountError, match="not valid Unicode"):
        hash_password("\ud800 lone surrogate")


@pytest.mark.parametrize(
    ("password", "message"),
    [("", "too short"), ("seven77", "too short"), ("x" * (MAX_PASSWORD + 1), "too long")],
)
def test_password_rules(password: str, message: str) -> None:
    with pytest.raises(AccountError, match=message):
        check_password(password)
    with pytest.raises(AccountError, match=message):
        hash_password(password)


def test_password_limits_are_inclusive() -> None:
    check_password("8 chars!")
    check_password("x" * MAX_PASSWORD)


# --- the accounts table ------------------------------------------------------------------------


def test_the_migration_adds_the_accounts_table_to_a_version_1_database(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied INTEGER)")
        db.execute("INSERT INTO schema_version VALUES (1, 0)")
    db.close()
    with Storage(path) as storage:
        assert storage.schema_version() == SCHEMA_VERSION
        columns = storage.connection.execute("PRAGMA table_info(accounts)").fetchall()
        assert [(c[1], c[2], c[3], c[5]) for c in columns] == [
            ("name", "TEXT", 1, 1),  # (name, type, not null, primary key)
            ("password", "TEXT", 1, 0),
            ("created", "INTEGER", 1, 0),
            ("is_admin", "INTEGER", 1, 0),
        ]


def test_add_and_list(accounts: Accounts) -> None:
    assert accounts.list() == []
    assert accounts.add("bob", "bob's password") == AccountInfo("bob", 1_700_000_000_500, False)
    accounts.add("alice", "alice's password", admin=True)
    assert accounts.list() == [
        AccountInfo("alice", 1_700_000_000_500, True),
        AccountInfo("bob", 1_700_000_000_500, False),
    ]
    assert accounts.get("alice") == AccountInfo("alice", 1_700_000_000_500, True)
    assert accounts.get("carol") is None
    assert accounts.exists("alice")
    assert not accounts.exists("carol")
    assert not accounts.exists("Alice")  # names are case-sensitive, as in the hub


def test_the_password_is_stored_hashed(accounts: Accounts, path: Path) -> None:
    accounts.add("alice", "alice's password")
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT password FROM accounts WHERE name = 'alice'").fetchone()
    db.close()
    assert stored.startswith("scrypt$16384$8$1$")
    assert "alice's password" not in stored
    assert verify_password("alice's password", stored)


def test_authenticate(accounts: Accounts) -> None:
    accounts.add("alice", "alice's password")
    assert accounts.authenticate("alice", "alice's password")
    assert not accounts.authenticate("alice", "bob's password")
    assert not accounts.authenticate("bob", "alice's password")
    assert not accounts.authenticate("", "alice's password")


def test_duplicate_user(accounts: Accounts, scrypt_calls: list[int]) -> None:
    accounts.add("alice", "first password")
    with pytest.raises(AccountError, match="alice already exists"):
        accounts.add("alice", "second password")
    assert len(scrypt_calls) == 1  # refused before hashing
    assert accounts.authenticate("alice", "first password")


@pytest.mark.parametrize("name", ["", "has space", "x" * 51, "caf\u00e9", "a/b"])
def test_invalid_names_are_refused(accounts: Accounts, name: str) -> None:
    with pytest.raises(AccountError, match="invalid user name"):
        accounts.add(name, "a good password")
    assert accounts.list() == []


def test_a_short_password_is_refused_and_nothing_is_added(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="too short"):
        accounts.add("alice", "short")
    assert not accounts.exists("alice")


def test_set_password(accounts: Accounts) -> None:
    accounts.add("alice", "old password")
    accounts.set_password("alice", "new password")
    assert accounts.authenticate("alice", "new password")
    assert not accounts.authenticate("alice", "old password")
    with pytest.raises(AccountError, match="too short"):
        accounts.set_password("alice", "short")
    assert accounts.authenticate("alice", "new password")


def test_set_password_of_an_unknown_user(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="no such user: carol"):
        accounts.set_password("carol", "a good password")
    assert accounts.list() == []


def test_authenticate_runs_one_scrypt_whether_or_not_the_user_exists(
    accounts: Accounts, scrypt_calls: list[int]
) -> None:
    accounts.add("alice", "alice's password")
    scrypt_calls.clear()
    assert not accounts.authenticate("alice", "wrong password")
    assert scrypt_calls == [2**14]
    assert not accounts.authenticate("nobody", "wrong password")
    assert not accounts.authenticate("nobody", "alice's password")
    assert not accounts.authenticate("not a valid name!", "wrong password")
    # The same scrypt, with the same parameters, for each unknown name.
    assert scrypt_calls == [2**14] * 4


def test_password_hash_is_a_dummy_for_an_unknown_user(accounts: Accounts) -> None:
    accounts.add("alice", "alice's password")
    assert verify_password("alice's password", accounts.password_hash("alice"))
    dummy = accounts.password_hash("nobody")
    assert dummy == accounts.password_hash("somebody else")  # fixed: computed once
    assert dummy.startswith("scrypt$16384$8$1$")
    assert not verify_password("alice's password", dummy)


def test_a_connection_shares_the_storage_database(storage: Storage, path: Path) -> None:
    accounts = Accounts(storage.connection)
    accounts.add("alice", "alice's password")
    storage.ensure_user("alice", 5)
    storage.commit()
    with Accounts(path) as other:  # what the command line opens, beside the daemon
        assert [info.name for info in other.list()] == ["alice"]


def test_a_connection_with_implicit_transactions_is_refused(path: Path) -> None:
    Storage(path).close()
    db = sqlite3.connect(path)
    with pytest.raises(ValueError, match="autocommit"):
        Accounts(db)
    db.close()


def test_a_connection_without_the_accounts_table_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "other.sqlite3", isolation_level=None)
    with pytest.raises(AccountError, match="no accounts table"):
        Accounts(db)
    db.close()


def test_a_path_is_opened_migrated_and_closed(path: Path) -> None:
    with Accounts(path) as accounts:
        accounts.add("alice", "alice's password")
    accounts.close()  # twice is harmless
    with Storage(path) as storage:
        assert storage.schema_version() == SCHEMA_VERSION
        assert storage.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert Accounts(storage.connection).exists("alice")


# --- chatd user --------------------------------------------------------------------------------


def run(path: Path, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = user_command(
        list(argv), db_path=path, stdin=NotATty(stdin), stdout=stdout, stderr=stderr
    )
    return status, stdout.getvalue(), stderr.getvalue()


def test_cli_add_list_passwd(path: Path) -> None:
    assert run(path, "add", "alice", stdin="secret-pass\n") == (0, "added the user alice\n", "")
    assert run(path, "add", "root", "--admin", stdin="root password\n")[0] == 0
    status, listing, _ = run(path, "list")
    assert status == 0
    lines = [line.split("\t") for line in listing.splitlines()]
    assert [line[0] for line in lines] == ["alice", "root"]
    assert [line[2:] for line in lines] == [[], ["admin"]]
    assert lines[0][1].endswith("Z")  # ISO 8601, UTC
    with Accounts(path) as accounts:
        assert accounts.authenticate("alice", "secret-pass")

    status, out, err = run(path, "passwd", "alice", stdin="new secret pass\n")
    assert (status, out, err) == (0, "changed the password of alice\n", "")
    with Accounts(path) as accounts:
        assert accounts.authenticate("alice", "new secret pass")
        assert not accounts.authenticate("alice", "secret-pass")


def test_cli_reads_one_line_and_keeps_spaces(path: Path) -> None:
    assert run(path, "add", "alice", stdin="  spaced out  \r\nsecond line\n")[0] == 0
    with Accounts(path) as accounts:
        assert accounts.authenticate("alice", "  spaced out  ")


@pytest.mark.parametrize(
    ("argv", "stdin", "error"),
    [
        (["add", "alice"], "alice's password\n", "chatd user add: the user alice already exists"),
        (["add", "bob"], "short\n", "chatd user add: the password is too short"),
        (["add", "bob"], "", "chatd user add: no password on standard input"),
        (["add", "b b"], "bob's password\n", "chatd user add: invalid user name 'b b'"),
        (["passwd", "carol"], "carol's password\n", "chatd user passwd: no such user: carol"),
    ],
)
def test_cli_errors_exit_1_with_one_line(
    path: Path, argv: list[str], stdin: str, error: str
) -> None:
    assert run(path, "add", "alice", stdin="alice's password\n")[0] == 0
    status, out, err = run(path, *argv, stdin=stdin)
    assert status == 1
    assert out == ""
    assert err.startswith(error)
    assert err.count("\n") == 1
    with Accounts(path) as accounts:
        assert [info.name for info in accounts.list()] == ["alice"]
        assert accounts.authenticate("alice", "alice's password")


def test_cli_does_not_create_a_database_to_list_or_change(path: Path) -> None:
    for argv in (["list"], ["passwd", "alice"]):
        status, out, err = run(path, *argv, stdin="alice's password\n")
        assert (status, out) == (1, "")
        assert err == f"chatd user {argv[0]}: there is no database at {path}\n"
    assert not path.exists()


def test_cli_usage_errors_exit_2(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(path, "remove", "alice")[0] == 2
    assert run(path)[0] == 2
    assert "usage: chatd user" in capsys.readouterr().err
    assert not path.exists()


def test_cli_on_a_tty_asks_twice_without_echo(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["tty password", "tty password", "one password", "another one"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    stdout, stderr = io.StringIO(), io.StringIO()
    assert user_command(["add", "alice"], db_path=path, stdin=Tty(), stdout=stdout) == 0
    assert prompts == ["Password: ", "Password again: "]
    status = user_command(
        ["passwd", "alice"], db_path=path, stdin=Tty(), stdout=stdout, stderr=stderr
    )
    assert status == 1
    assert stderr.getvalue() == "chatd user passwd: the passwords do not match\n"
    with Accounts(path) as accounts:
        assert accounts.authenticate("alice", "tty password")
