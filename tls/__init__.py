"""TLS helpers for rfc6455 and chatd: safe ``ssl`` contexts and local certificates.

``server_context`` and ``client_context`` build ``ssl.SSLContext`` objects for
``wss://`` (TLS 1.2 minimum, ALPN ``http/1.1``, certificates verified). For local
development, ``ensure_certificates`` fills a directory with ``cert.pem``, ``key.pem`` and
``ca.pem``, made by mkcert when it is installed and by a local CA otherwise;
``python -m tls`` does that from the command line and explains how to trust the CA.

Importing this package needs only the standard library: the names that need the
``cryptography`` package (``certificate_problem``, ``ensure_local_ca``, ``issue_leaf``)
load ``tls.localca`` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tls.context import ALPN_PROTOCOLS, MINIMUM_TLS_VERSION, client_context, server_context
from tls.mkcert import (
    CA_FILE,
    CERT_FILE,
    DEFAULT_HOSTS,
    KEY_FILE,
    CertificateFiles,
    Issuer,
    MkcertError,
    ensure_certificates,
    find_mkcert,
    issue_with_mkcert,
    mkcert_caroot,
    trust_instructions,
)

if TYPE_CHECKING:
    from tls.localca import CA_KEY_FILE, certificate_problem, ensure_local_ca, issue_leaf
else:
    _FROM_LOCALCA = frozenset(
        {"CA_KEY_FILE", "certificate_problem", "ensure_local_ca", "issue_leaf"}
    )

    def __getattr__(name: str) -> object:
        if name in _FROM_LOCALCA:
            from tls import localca  # noqa: PLC0415 - imports cryptography on first use

            return getattr(localca, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALPN_PROTOCOLS",
    "CA_FILE",
    "CA_KEY_FILE",
    "CERT_FILE",
    "DEFAULT_HOSTS",
    "KEY_FILE",
    "MINIMUM_TLS_VERSION",
    "CertificateFiles",
    "Issuer",
    "MkcertError",
    "certificate_problem",
    "client_context",
    "ensure_certificates",
    "ensure_local_ca",
    "find_mkcert",
    "issue_leaf",
    "issue_with_mkcert",
    "mkcert_caroot",
    "server_context",
    "trust_instructions",
]
