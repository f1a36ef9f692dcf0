"""Origin checks and CORS: which web pages may talk to chatd.

A browser sends ``Origin`` with every WebSocket handshake (RFC 6455 section 10.2) and with
cross-origin API requests (RFC 6454). A WebSocket is not covered by the same-origin
policy: without a check, any page a logged-in user visits could open a socket with the
user's cookie and chat as them (cross-site WebSocket hijacking). So the handshake is
refused with 403 before the upgrade unless the page's origin is chatd's own or on the
allow-list; clients that send no ``Origin`` (command-line tools, other servers) are not
browsers and cannot carry someone else's cookie, and are allowed unless configured not
to be.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "normalize_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with the default port left out, or None if
    ``origin`` is not a serialized origin (RFC 6454 section 6.2) of http or https.
    """
    origin = origin.strip()
    if not origin or origin == "null" or len(origin) > 300:
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Who may connect: chatd's own origin, the ``allowed`` ones, and (if
    ``allow_missing``) clients that send no ``Origin`` at all.
    """

    allowed: frozenset[str] = frozenset()
    allow_missing: bool = True

    @classmethod
    def from_config(cls, origins: tuple[str, ...], *, allow_missing: bool) -> OriginPolicy:
        """Build the policy from configured origins; a malformed one is a ValueError
        naming it, so that a typo stops the start instead of locking everyone out.
        """
        allowed: set[str] = set()
        for origin in origins:
            normalized = normalize_origin(origin)
            if normalized is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
            allowed.add(normalized)
        return cls(frozenset(allowed), allow_missing)

    def own_origin(self, host: str | None, *, tls: bool) -> str | None:
        """chatd's origin as the browser names it, from the request's ``Host``."""
        if not host:
            return None
        return normalize_origin(f"{'https' if tls else 'http'}://{host}")

    def check(self, origin: str | None, host: str | None, *, tls: bool) -> str | None:
        """None if a request with this ``Origin`` may proceed, else the reason to refuse."""
        if origin is None:
            return None if self.allow_missing else "no Origin header"
        normalized = normalize_origin(origin)
        if normalized is None:
            return "Origin is not allowed"
        if normalized == self.own_origin(host, tls=tls) or normalized in self.allowed:
            return None
        return "Origin is not allowed"

    def cors_headers(
        self, origin: str | None, host: str | None, *, tls: bool
    ) -> list[tuple[str, str]]:
        """CORS response headers for the API: only for an allowed foreign origin (the
        same origin needs none), with credentials, so that its pages may send the cookie.
        """
        if origin is None:
            return []
        normalized = normalize_origin(origin)
        if normalized is None or normalized not in self.allowed:
            return []
        if normalized == self.own_origin(host, tls=tls):
            return []
        return [
            ("Access-Control-Allow-Origin", normalized),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]
