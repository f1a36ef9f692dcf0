"""Access tokens (JWT, RFC 7519), the cookie that carries them (RFC 6265), login throttling.

After a password login chatd issues a signed token, ``HS256`` (HMAC-SHA256, RFC 7518
section 3.2) with a secret only the server knows, and sends it in an ``HttpOnly``,
``SameSite=Lax`` cookie (``Secure`` under TLS). A browser then presents it on every
request, the WebSocket upgrade included; a client that cannot use cookies puts it in
``?token=``. Verifying a token needs no database read, so several chatd nodes that share
the secret accept each other's tokens.

Verification accepts exactly one algorithm: a token's header names its own algorithm,
and a verifier that believed it would accept ``alg: none`` (no signature at all) or an
algorithm of the attacker's choosing (RFC 8725 section 2.1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from chatd.protocol import is_valid_name

__all__ = [
    "ALGORITHM",
    "COOKIE_NAME",
    "DEFAULT_TTL",
    "MAX_TOKEN_LENGTH",
    "QUERY_PARAMETER",
    "SECRET_BYTES",
    "AuthError",
    "LoginThrottle",
    "Token",
    "TokenIssuer",
    "clear_cookie",
    "load_or_create_secret",
    "session_cookie",
    "token_from_headers",
]

#: The one signature algorithm chatd issues and accepts.
ALGORITHM = "HS256"
#: Size of the signing secret in bytes: RFC 7518 section 3.2 asks for a key at least as
#: long as the hash output (256 bits for HS256).
SECRET_BYTES = 32
#: How long a token is valid: 12 hours.
DEFAULT_TTL = 12 * 60 * 60.0
#: Longer strings are refused before they are decoded; chatd's tokens are ~250 characters.
MAX_TOKEN_LENGTH = 4096
#: The cookie that carries the token, and the query parameter that may instead.
COOKIE_NAME = "chatd_token"
QUERY_PARAMETER = "token"
#: Claims a token must have (RFC 7519 section 4.1).
REQUIRED_CLAIMS = ("sub", "iss", "iat", "exp")


class AuthError(Exception):
    """The signing secret cannot be used (unsafe file mode, too short, unreadable)."""


# --- the signing secret ------------------------------------------------------------------------


def load_or_create_secret(path: Path) -> bytes:
    """The token signing secret in ``path``, created on first use.

    The file holds the secret as hexadecimal text (64 digits for 32 bytes, then a newline),
    so it can be read, copied to another node and checked by eye. A new one is written to
    a temporary file with mode 0600 and linked into place, so no reader ever sees it half
    written and, if two processes create it at once, both use the first. A file that group
    or others may read or write is refused (``AuthError``): whoever reads the secret can
    sign tokens for any user.
    """
    path = Path(path)
    if not path.exists():
        _create_secret(path)
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise AuthError(f"the token secret {path} is not a regular file")
            if mode & 0o077:
                raise AuthError(
                    f"the token secret {path} is accessible to group or others"
                    f" (mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
                )
            text = file.read(4096)  # a secret is 65 bytes; more is not a secret file
    except OSError as error:
        raise AuthError(f"cannot read the token secret {path}: {error.strerror}") from error
    try:
        secret = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise AuthError(f"the token secret {path} is not hexadecimal text") from None
    if len(secret) < SECRET_BYTES:
        raise AuthError(
            f"the token secret {path} is {len(secret)} bytes; it must be at least {SECRET_BYTES}"
        )
    return secret


def _create_secret(path: Path) -> None:
    """Write a new random secret to ``path`` atomically, mode 0600, unless one appeared."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # whatever the umask
                file.write(secrets.token_hex(SECRET_BYTES).encode("ascii") + b"\n")
                file.flush()
                os.fsync(file.fileno())
            # link, not replace: if another process made one first, keep and use that one.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink()
    except OSError as error:
        raise AuthError(f"cannot create the token secret {path}: {error}") from error


# --- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A signed token and when it expires (seconds since the epoch)."""

    value: str
    expires: float


class TokenIssuer:
    """Issues and verifies chatd's access tokens (JWT, RFC 7519, signed HS256).

    A token carries ``sub`` (the user), ``iss`` (this issuer), ``iat`` and ``exp`` (issued
    and expiry times, whole seconds) and a random ``jti``. ``clock`` gives the current
    time in seconds since the epoch; ``leeway`` (seconds) forgives that much clock
    difference between nodes on ``exp`` and ``iat``.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        issuer: str = "chatd",
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        leeway: float = 0.0,
    ) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the secret must be at least {SECRET_BYTES} bytes")
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl}")
        self._secret = secret
        self.issuer = issuer
        self.ttl = ttl
        self.leeway = leeway
        self._clock = clock

    def issue(self, user: str) -> Token:
        """A new token for ``user``, valid for ``ttl`` seconds from now.

        ``user`` must be a valid chatd name (``ValueError``): ``verify`` refuses others.
        """
        if not is_valid_name(user):
            raise ValueError(f"not a user name: {user!r}")
        now = int(self._clock())
        expires = now + int(self.ttl)
        claims = {
            "sub": user,
            "iss": self.issuer,
            "iat": now,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),
        }
        return Token(jwt.encode(claims, self._secret, algorithm=ALGORITHM), float(expires))

    def verify(self, token: str) -> str | None:
        """The user a valid token was issued to, or None for any invalid token."""
        return self.verify_reason(token)[0]

    def expiry(self, token: str) -> float | None:
        """The ``exp`` claim of a token ``verify`` accepted (read, not checked again)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        value = claims.get("exp")
        return float(value) if isinstance(value, int | float) else None

    def verify_reason(self, token: str) -> tuple[str | None, str]:
        """``(user, "ok")`` for a valid token, else ``(None, why)`` for the log.

        ``why`` is a short phrase for operators: ``"too long"``, ``"malformed"``,
        ``"algorithm not allowed"``, ``"bad signature"``, ``"no <claim> claim"``,
        ``"wrong issuer"``, ``"malformed times"``, ``"expired"``, ``"issued in the
        future"``, ``"bad subject"`` or ``"invalid: ..."``. The client learns only that it
        must log in again.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            return None, "too long"
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # pinned: never what the header asks for
                issuer=self.issuer,
                # exp and iat are checked below against ``clock``; PyJWT reads the real time.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAlgorithmError:
            return None, "algorithm not allowed"
        except jwt.InvalidSignatureError:
            return None, "bad signature"
        except jwt.MissingRequiredClaimError as error:
            return None, f"no {error.claim} claim"
        except jwt.InvalidIssuerError:
            return None, "wrong issuer"
        except jwt.DecodeError:
            return None, "malformed"
        except jwt.InvalidTokenError as error:
            return None, f"invalid: {error}"
        return self._check_claims(claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> tuple[str | None, str]:
        """The time and subject checks PyJWT was told to skip (RFC 7519 section 4.1)."""
        now = self._clock()
        issued, expires, user = claims["iat"], claims["exp"], claims["sub"]
        if not _is_number(issued) or not _is_number(expires):
            return None, "malformed times"
        # Section 4.1.4: the current time must be before the expiration time.
        if now >= expires + self.leeway:
            return None, "expired"
        if issued > now + self.leeway:
            return None, "issued in the future"
        if not isinstance(user, str) or not is_valid_name(user):
            return None, "bad subject"
        return user, "ok"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the cookie --------------------------------------------------------------------------------


def session_cookie(token: Token, *, secure: bool, now: float | None = None) -> str:
    """The ``Set-Cookie`` value that stores ``token`` in the browser (RFC 6265 section 4.1).

    ``HttpOnly``: page scripts cannot read it. ``SameSite=Lax``: other sites' pages do not
    send it with their requests, but following a link to chatd does. ``Max-Age``: it goes
    when the token expires (``now`` defaults to the current time). ``Secure`` under TLS.
    """
    current = time.time() if now is None else now
    max_age = max(0, int(token.expires - current))
    cookie = f"{COOKIE_NAME}={token.value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    return cookie + "; Secure" if secure else cookie


def clear_cookie(*, secure: bool) -> str:
    """The ``Set-Cookie`` value that removes the token cookie (logout): ``Max-Age=0``."""
    cookie = f"{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
    return cookie + "; Secure" if secure else cookie


def token_from_headers(cookie_header_values: list[str], query: Mapping[str, str]) -> str | None:
    """The token a request carries: the ``chatd_token`` cookie, else ``?token=``; or None.

    ``cookie_header_values`` are the request's ``Cookie`` header values. They are parsed
    by hand, leniently, as RFC 6265 section 5.4 has a server read them: pairs split on
    ``;``, name and value on the first ``=``. ``http.cookies.SimpleCookie`` would drop
    every cookie after one it cannot parse, and other sites' cookies on the same host
    are often junk to it. An empty value (a cleared cookie) counts as none.
    """
    for header in cookie_header_values:
        for pair in header.split(";"):
            name, equals, value = pair.partition("=")
            if not equals or name.strip() != COOKIE_NAME:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    return query.get(QUERY_PARAMETER) or None


# --- login throttling --------------------------------------------------------------------------


class LoginThrottle:
    """At most ``attempts`` failed logins per client in any ``per`` seconds.

    A sliding window: a client is refused while it has ``attempts`` failures younger
    than ``per`` seconds, and let in again as the oldest of them ages out. A success
    clears the client's failures. Memory is bounded: clients whose failures have all
    aged out are forgotten, and beyond ``max_clients`` the client that failed least
    recently is forgotten first. An IPv6 client is counted by its /64 network, since
    one host usually has a whole /64 to pick addresses from.
    """

    def __init__(
        self,
        attempts: int = 5,
        per: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_clients: int = 10_000,
    ) -> None:
        if attempts < 1 or per <= 0 or max_clients < 1:
            raise ValueError("attempts, per and max_clients must be positive")
        self.attempts = attempts
        self.per = per
        self.max_clients = max_clients
        self._clock = clock
        #: client -> times of its recent failures, oldest first; the least recently
        #: failed client first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many clients are tracked."""
        return len(self._failures)

    def allowed(self, ip: str) -> bool:
        """Whether ``ip`` may try to log in now."""
        return self.retry_after(ip) == 0.0

    def retry_after(self, ip: str) -> float:
        """Seconds until ``ip`` may try again (0.0 if it may now): for ``Retry-After``."""
        failures = self._failures.get(_client_key(ip))
        if failures is None or len(failures) < self.attempts:
            return 0.0
        return max(0.0, failures[0] + self.per - self._clock())

    def failed(self, ip: str) -> None:
        """Count a failed login from ``ip``."""
        now = self._clock()
        key = _client_key(ip)
        failures = self._failures.get(key)
        if failures is None:
            # Only ``attempts`` failures matter: the oldest of them says when to let in.
            failures = self._failures[key] = deque(maxlen=self.attempts)
        failures.append(now)
        self._failures.move_to_end(key)
        self._evict(now)

    def succeeded(self, ip: str) -> None:
        """Take back the attempt of ``ip`` counted last (``failed`` is called when a check
        starts, so that checks in flight count at once): a login that knew its password
        does not count, but does not wipe the other failures either, so that one valid
        account cannot launder guesses at another.
        """
        failures = self._failures.get(_client_key(ip))
        if failures:
            failures.pop()

    def _evict(self, now: float) -> None:
        # The table is ordered by last failure, so every client whose failures have all
        # aged out is at the front.
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if len(self._failures) <= self.max_clients and oldest[-1] > now - self.per:
                break
            self._failures.popitem(last=False)


def _client_key(ip: str) -> str:
    """What a client is counted by: its IPv4 address, or its IPv6 /64 network."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (a Unix socket peer, a test): count it as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
