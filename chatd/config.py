"""What chatd enforces, in one value: auth mode, origins and traffic limits.

``ChatSettings`` is built at start-up from the configuration (chatd/options.py) and read
by the handler and the hub; on SIGHUP ``ChatServer.apply`` swaps in a new one, on the loop
thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatd.limits import Limits

__all__ = ["AUTH_MODES", "BUS_SCHEMES", "ChatSettings"]

#: ``open``: a guest picks a name (local development, ``make run``); ``required``: the
#: upgrade and the API need a valid token.
AUTH_MODES = ("open", "required")
#: What ``--bus`` may name besides ``local`` (redis-py's URL schemes).
BUS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """chatd's protections and their defaults (DESIGN.md's defaults table)."""

    auth: str = "open"
    #: Origins besides chatd's own whose pages may connect and call the API with
    #: credentials (``scheme://host[:port]``).
    allowed_origins: tuple[str, ...] = ()
    #: Whether a handshake without ``Origin`` (not a browser) is allowed.
    allow_missing_origin: bool = True
    limits: Limits = field(default_factory=Limits)
    #: The file holding the token signing secret (made with mode 0600 if missing); None:
    #: ``chatd-secret`` beside the database.
    secret_file: str | None = None
    #: Seconds an access token stays valid.
    token_ttl: float = 12 * 3600.0
    #: Whether ``POST /api/auth/register`` creates accounts (off: ``chatd user add``).
    registration: bool = False
    #: Failed logins allowed per client address in ``login_window`` seconds.
    login_attempts: int = 5
    login_window: float = 60.0
    #: Whether the server is reached over TLS (cookies get ``Secure``).
    tls: bool = False
    #: The token signing secret itself, instead of ``secret_file`` (32 characters at least).
    secret: str | None = None
    #: Messages sent with ``joined``.
    history_on_join: int = 50
    #: ``local``: one node; ``redis://host:port/db``: nodes share rooms through Redis.
    bus: str = "local"
    #: This node's name on the bus (None: host name and process id).
    node_id: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting that is wrong."""
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        if not self.token_ttl > 0:
            raise ValueError(f"token_ttl must be positive, not {self.token_ttl!r}")
        if self.secret is not None and len(self.secret) < 32:
            raise ValueError("secret must be at least 32 characters")
        if self.login_attempts < 1 or not self.login_window > 0:
            raise ValueError("login_attempts must be at least 1 and login_window positive")
        if self.bus != "local" and not self.bus.startswith(BUS_SCHEMES):
            raise ValueError(f"bus must be 'local' or a redis:// URL, not {self.bus!r}")
        self.limits.validate()
