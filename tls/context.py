"""``ssl.SSLContext`` factories with safe defaults for ``wss://``.

Both sides refuse anything older than TLS 1.2 and offer exactly one ALPN protocol,
``http/1.1``: the WebSocket opening handshake is an HTTP/1.1 request (RFC 6455 §4.1), and
a browser that sees ``h2`` chosen would try to speak HTTP/2 instead. Ciphers, curves and
the security level are left to the standard library, whose defaults track current
guidance (no RC4, no 3DES, no SHA-1 signatures, forward secrecy only).

Timeouts are not a property of a context: the runtime bounds the TLS handshake with the
same timer that bounds the HTTP opening handshake, and a blocking client uses its socket
timeout.

This module uses the standard library only, so the runtime can import it without the
``cryptography`` package that issuing certificates needs.
"""

from __future__ import annotations

import os
import ssl
from typing import Final

__all__ = ["ALPN_PROTOCOLS", "MINIMUM_TLS_VERSION", "client_context", "server_context"]

StrPath = str | os.PathLike[str]

MINIMUM_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2
"""TLS 1.0 and 1.1 are deprecated by RFC 8996; every browser since 2020 speaks 1.2 or 1.3."""

ALPN_PROTOCOLS: Final = ("http/1.1",)
"""The only application protocol a WebSocket server speaks on a fresh TLS connection."""


def server_context(
    certfile: StrPath, keyfile: StrPath, *, password: str | bytes | None = None
) -> ssl.SSLContext:
    """Return a server context that presents ``certfile`` with its private ``keyfile``.

    ``password`` decrypts an encrypted key file. Besides the library defaults:

    - TLS 1.2 is the minimum version (RFC 8996 deprecates 1.0 and 1.1).
    - ALPN selects ``http/1.1`` when the client offers it; a client that offers only
      other protocols gets no ALPN answer rather than a refused handshake.
    - TLS compression stays off (CRIME leaks secrets through compressed lengths);
      it is the default, and is set again here so the intent is written down.
    - Renegotiation is refused: nothing in WebSocket needs it, and client-initiated
      renegotiation is a cheap way to make a server do expensive handshakes.
    - TLS 1.2 session tickets are off: OpenSSL encrypts them with one key for the life
      of the context, so a long-running daemon would weaken forward secrecy. Sessions
      still resume from the server-side cache, and TLS 1.3 tickets become stateful.
    - Client certificates are not requested (``verify_mode`` stays ``CERT_NONE``);
      chatd authenticates users inside HTTP.

    Raises ``OSError`` when a file cannot be read and ``ssl.SSLError`` when the key does
    not match the certificate or cannot be decrypted.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_TLS_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    context.load_cert_chain(certfile, keyfile, password)
    return context


def client_context(cafile: StrPath | None = None) -> ssl.SSLContext:
    """Return a client context that verifies the server's certificate and host name.

    With ``cafile``, only the CA certificates in that PEM file are trusted (the local
    development CA, say); without it, the system's trust store is used. Built on
    ``ssl.create_default_context`` so it keeps the standard library's hardening (and
    honours ``SSLKEYLOGFILE`` for debugging with Wireshark), and then:

    - the certificate is required and must match the host name or IP address passed as
      ``server_hostname`` (``CERT_REQUIRED``, ``check_hostname``), which is what makes
      TLS more than encryption against a passive eavesdropper;
    - X.509 checks are strict (``VERIFY_X509_STRICT``, the default from Python 3.13 on),
      so a malformed certificate is refused here as it would be by a browser;
    - TLS 1.2 is the minimum version and ALPN offers ``http/1.1``.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.minimum_version = MINIMUM_TLS_VERSION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return context
