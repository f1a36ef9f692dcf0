"""Password accounts: scrypt hashes (RFC 7914) in chatd's SQLite database.

A password is stored as one string that carries everything needed to check it again::

    scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>

so the cost parameters can be raised later without invalidating the hashes already
stored: each is verified with the parameters it was made with. The password is the UTF-8
encoding of its NFC normalization (RFC 8265's OpaqueString profile normalizes the same
way), so "é" typed as one code point or as "e" plus a combining accent is one password.

The accounts live in the ``accounts`` table that ``chatd.storage.MIGRATIONS`` creates.
Inside the daemon, ``Accounts(storage.connection)`` shares the event loop's connection:
no second connection, and the loop thread stays the connection's only user. The command
line (``chatd user ...``) runs in a process of its own and gives a path instead; the file
is then opened through ``Storage``, so it gets the same WAL mode and migrations.

Checking a password costs one scrypt (about 16 MiB and some tens of milliseconds), on
purpose. ``authenticate`` pays that cost whether or not the user exists, so the time it
takes does not tell an attacker which names have accounts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import builtins
import getpass
import hashlib
import hmac
import os
import sqlite3
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TextIO

from chatd.protocol import MAX_NAME, is_valid_name
from chatd.storage import Storage, StorageError

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "SALT_BYTES",
    "SCRYPT_DKLEN",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "AccountError",
    "AccountInfo",
    "Accounts",
    "add_user_parser",
    "check_password",
    "hash_password",
    "run_user_command",
    "user_command",
    "verify_password",
]

#: scrypt cost parameters for new hashes (RFC 7914 section 2): CPU/memory cost ``n``,
#: block size ``r``, parallelism ``p``; they take 128 * n * r = 16 MiB per hash.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
#: Length of the derived key, and of the random salt, in bytes.
SCRYPT_DKLEN = 32
SALT_BYTES = 16
#: Password length in characters (after NFC normalization).
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

#: OpenSSL refuses scrypt above 32 MiB by default; 64 MiB admits the 16 MiB of the
#: defaults with room to raise ``r`` or ``n`` once.
_SCRYPT_MAXMEM = 64 * 1024 * 1024
#: Stored parameters above these are refused (False), not run: a damaged row must not
#: turn a login into minutes of CPU.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_SCHEME = "scrypt"


class AccountError(Exception):
    """An account operation was refused: bad name or password, duplicate or unknown user."""


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """An account as ``Accounts.list`` shows it; ``created`` is in ms since the epoch."""

    name: str
    created: int
    is_admin: bool


# --- password hashes ---------------------------------------------------------------------------


def _normalize(password: str) -> str:
    return unicodedata.normalize("NFC", password)


def _password_bytes(normalized: str) -> bytes:
    # surrogatepass: a lone surrogate (JSON allows "\ud800") must not raise in verify.
    return normalized.encode("utf-8", "surrogatepass")


def _scrypt(password: bytes, salt: bytes, *, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=_SCRYPT_MAXMEM)


def _format(n: int, r: int, p: int, salt: bytes, digest: bytes) -> str:
    salt_text = base64.b64encode(salt).decode("ascii")
    digest_text = base64.b64encode(digest).decode("ascii")
    return f"{_SCHEME}${n}${r}${p}${salt_text}${digest_text}"


def check_password(password: str) -> None:
    """Raise ``AccountError`` unless ``password`` may be set: 8-1024 characters of text."""
    length = len(_normalize(password))
    if length < MIN_PASSWORD:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if length > MAX_PASSWORD:
        raise AccountError(f"the password is too long: at most {MAX_PASSWORD} characters")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise AccountError("the password is not valid Unicode text") from None


def hash_password(password: str) -> str:
    """Hash ``password`` with scrypt and a random salt, as ``scrypt$n$r$p$salt$hash``.

    The password is checked first (``check_password``).
    """
    check_password(password)
    salt = os.urandom(SALT_BYTES)
    password_bytes = _password_bytes(_normalize(password))
    digest = _scrypt(password_bytes, salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_DKLEN)
    return _format(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest)


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The parameters, salt and hash in a stored string, or None if it is not one."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    if not all(part.isascii() and part.isdigit() for part in parts[1:4]):
        return None
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        return None
    if not salt or len(digest) < 16:
        return None
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (from ``hash_password``).

    A malformed ``stored`` string, or a password longer than any that can be set, is
    False rather than an error: this answers a login form.
    """
    parsed = _parse(stored)
    normalized = _normalize(password)
    if parsed is None or len(normalized) > MAX_PASSWORD:
        return False
    n, r, p, salt, digest = parsed
    try:
        candidate = _scrypt(_password_bytes(normalized), salt, n=n, r=r, p=p, dklen=len(digest))
    except (ValueError, MemoryError):  # parameters this OpenSSL will not run
        return False
    return hmac.compare_digest(candidate, digest)


#: What ``authenticate`` verifies against for a name without an account: well-formed, with
#: the current parameters, so the scrypt run is the same as for a real account. Its hash
#: is random bytes, not the hash of anything, so no password matches it.
_DUMMY_HASH = _format(
    SCRYPT_N, SCRYPT_R, SCRYPT_P, os.urandom(SALT_BYTES), os.urandom(SCRYPT_DKLEN)
)


# --- the accounts table ------------------------------------------------------------------------


class Accounts:
    """The ``accounts`` table of chatd's database.

    ``database`` is either the daemon's open connection (``storage.connection``; it must
    be in autocommit mode, ``isolation_level=None``, as ``Storage`` opens it, and already
    migrated) or a path, which is opened through ``Storage`` (created if missing,
    migrated) and closed by ``close``. Each write is one statement, so it is its own
    transaction and never interleaves with the Storage's batched commits.

    Every method runs on the calling thread; ``authenticate`` and the writes spend one
    scrypt each (see the module docstring).
    """

    def __init__(
        self,
        database: sqlite3.Connection | str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._storage: Storage | None = None
        if isinstance(database, sqlite3.Connection):
            if database.isolation_level is not None:
                raise ValueError(
                    "the connection must be in autocommit mode (isolation_level=None),"
                    " as Storage opens it"
                )
            self._db = database
        else:
            self._storage = Storage(database)  # migrated: it has the accounts table
            self._db = self._storage.connection
        if not self._db.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'accounts'"
        ).fetchone():
            raise AccountError("the database has no accounts table: open it with Storage first")

    def close(self) -> None:
        """Close the database if this object opened it (a path); a connection is left open."""
        if self._storage is not None:
            self._storage.close()
            self._storage = None

    def __enter__(self) -> Accounts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, name: str, password: str, *, admin: bool = False) -> AccountInfo:
        """Create the account ``name``; ``AccountError`` if the name is bad or taken."""
        if not is_valid_name(name):
            raise AccountError(
                f"invalid user name {name!r}: 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
            )
        if self.exists(name):  # before the scrypt, and for a clear message
            raise AccountError(f"the user {name} already exists")
        return self.add_hashed(name, hash_password(password), admin=admin)

    def add_hashed(self, name: str, stored: str, *, admin: bool = False) -> AccountInfo:
        """Create ``name`` with a hash made beforehand (``hash_password``, on a worker
        thread when the caller is the event loop); ``AccountError`` if bad or taken.
        """
        if not is_valid_name(name):
            raise AccountError(
                f"invalid user name {name!r}: 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
            )
        created = int(self._clock() * 1000)
        try:
            self._db.execute(
                "INSERT INTO accounts (name, password, created, is_admin) VALUES (?, ?, ?, ?)",
                (name, stored, created, int(admin)),
            )
        except sqlite3.IntegrityError:  # added by another process meanwhile
            raise AccountError(f"the user {name} already exists") from None
        return AccountInfo(name, created, admin)

    def set_password(self, name: str, password: str) -> None:
        """Replace the password of ``name``; ``AccountError`` if there is no such user."""
        if not self.exists(name):
            raise AccountError(f"no such user: {name}")
        stored = hash_password(password)
        cursor = self._db.execute("UPDATE accounts SET password = ? WHERE name = ?", (stored, name))
        if cursor.rowcount == 0:  # removed by another process meanwhile
            raise AccountError(f"no such user: {name}")

    # ``list`` would shadow the builtin in the annotations below it: hence ``builtins.list``.
    def list(self) -> builtins.list[AccountInfo]:
        """Every account, by name."""
        rows = self._db.execute(
            "SELECT name, created, is_admin FROM accounts ORDER BY name"
        ).fetchall()
        return [AccountInfo(name, created, bool(is_admin)) for name, created, is_admin in rows]

    def get(self, name: str) -> AccountInfo | None:
        """The account ``name``, or None."""
        row = self._db.execute(
            "SELECT name, created, is_admin FROM accounts WHERE name = ?", (name,)
        ).fetchone()
        return AccountInfo(row[0], row[1], bool(row[2])) if row else None

    def exists(self, name: str) -> bool:
        """Whether ``name`` has an account."""
        return self._stored(name) is not None

    def password_hash(self, name: str) -> str:
        """The stored hash of ``name``, or a dummy one that matches no password.

        For a caller that runs ``verify_password`` off the event loop (``hashlib.scrypt``
        releases the GIL): the read stays on the loop's thread, the scrypt goes to a
        worker, and an unknown name costs the same scrypt as a known one.
        """
        stored = self._stored(name)
        return _DUMMY_HASH if stored is None else stored

    def authenticate(self, name: str, password: str) -> bool:
        """Whether ``password`` is the password of ``name``.

        One scrypt either way: a name without an account is verified against a dummy hash,
        so the answer takes as long as for a real account with a wrong password.
        """
        stored = self._stored(name)
        matched = verify_password(password, _DUMMY_HASH if stored is None else stored)
        return matched and stored is not None

    def _stored(self, name: str) -> str | None:
        row = self._db.execute("SELECT password FROM accounts WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])


# --- the command line: chatd user add|passwd|list ----------------------------------------------


def add_user_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``user`` with its ``add``, ``passwd`` and ``list`` commands to ``subparsers``.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returned. The parsed
    namespace has ``user_action`` (``"add"``, ``"passwd"`` or ``"list"``), ``name``,
    ``admin`` and ``password_stdin``; hand it to ``run_user_command``.
    """
    user = subparsers.add_parser(
        "user", help="manage accounts", description="Manage chatd's password accounts."
    )
    _add_user_actions(user)
    return user


def _add_user_actions(user: argparse.ArgumentParser) -> None:
    actions = user.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    stdin_help = "read the password from one line of standard input (implied when it is no TTY)"
    add = actions.add_parser("add", help="create an account", description="Create an account.")
    add.add_argument("name", help="the user name (1-50 letters, digits, '.', '_' or '-')")
    add.add_argument("--admin", action="store_true", help="may open the admin dashboard")
    add.add_argument("--password-stdin", action="store_true", help=stdin_help)
    passwd = actions.add_parser(
        "passwd", help="change a password", description="Change an account's password."
    )
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help=stdin_help)
    actions.add_parser("list", help="list the accounts", description="List the accounts.")


def user_command(
    argv: Sequence[str],
    *,
    db_path: str | os.PathLike[str],
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``chatd user ARGV...`` on the database ``db_path``; the exit status.

    0 on success, 1 with one line on ``stderr`` when the action fails, 2 (argparse's
    usage message) when ``argv`` is not a valid command line. The streams default to the
    ``sys`` ones at the time of the call.
    """
    stderr = sys.stderr if stderr is None else stderr
    parser = argparse.ArgumentParser(
        prog="chatd user", description="Manage chatd's password accounts."
    )
    _add_user_actions(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:  # usage errors and --help: argparse already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    return run_user_command(args, db_path=db_path, stdin=stdin, stdout=stdout, stderr=stderr)


def run_user_command(
    args: argparse.Namespace,
    *,
    db_path: str | os.PathLike[str],
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run a ``user`` command parsed by ``add_user_parser``; the exit status (0 or 1)."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    action: str = args.user_action
    try:
        if action != "add" and not Path(db_path).exists():
            # Only ``add`` may create the file: a mistyped --db should not leave one behind.
            raise AccountError(f"there is no database at {os.fspath(db_path)}")
        with Accounts(db_path) as accounts:
            if action == "list":
                for info in accounts.list():
                    created = datetime.fromtimestamp(info.created / 1000, UTC)
                    admin = "\tadmin" if info.is_admin else ""
                    print(f"{info.name}\t{created:%Y-%m-%dT%H:%M:%SZ}{admin}", file=stdout)
            elif action == "add":
                if accounts.exists(args.name):  # before asking for a password
                    raise AccountError(f"the user {args.name} already exists")
                password = _read_password(stdin, from_stdin=args.password_stdin)
                accounts.add(args.name, password, admin=args.admin)
                role = "admin" if args.admin else "user"
                print(f"added the {role} {args.name}", file=stdout)
            else:
                if not accounts.exists(args.name):
                    raise AccountError(f"no such user: {args.name}")
                password = _read_password(stdin, from_stdin=args.password_stdin)
                accounts.set_password(args.name, password)
                print(f"changed the password of {args.name}", file=stdout)
    except (AccountError, StorageError, sqlite3.Error, OSError) as error:
        print(f"chatd user {action}: {error}", file=stderr)
        return 1
    return 0


def _read_password(stdin: TextIO, *, from_stdin: bool) -> str:
    """The new password: asked twice without echo on a TTY, else one line of ``stdin``."""
    if from_stdin or not stdin.isatty():
        line = stdin.readline()
        if not line:
            raise AccountError("no password on standard input")
        return line.removesuffix("\n").removesuffix("\r")
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Password again: ")
    except EOFError:
        raise AccountError("no password given") from None
    if password != again:
        raise AccountError("the passwords do not match")
    return password
