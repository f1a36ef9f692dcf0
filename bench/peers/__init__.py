"""Servers built on other Python WebSocket libraries, measured beside ours.

Each is a module run as ``python -m bench.peers.NAME --port P``: it listens on
127.0.0.1, prints ``ready`` once it listens and exits on SIGTERM or SIGINT. Settings are
each library's defaults except compression (off everywhere) and the listen backlog
(``BACKLOG``), and ours are ``rfc6455.echo``'s; each module's docstring lists what that
leaves and anything else it had to choose.

Echo peers send every message back unchanged; they take ``--certfile`` and ``--keyfile``
to serve ``wss://`` (our own ``python -m rfc6455.echo`` takes the same options):

- ``websockets_echo``: the ``websockets`` library's asyncio implementation;
- ``aiohttp_echo``: ``aiohttp``'s ``web.WebSocketResponse``;
- ``picows_echo``: ``picows``, a Cython library that hands out frames, not messages.

Broadcast peers relay chat messages in chatd's wire format to every client of one room
(``/ws?name=NAME``; other paths get 404), a floor for what a broadcast costs on each:

- ``websockets_broadcast``: with ``websockets.broadcast``;
- ``aiohttp_broadcast``: with ``WebSocketResponse.send_frame`` per member;
- ``picows_broadcast``: one frame buffer written to every member's transport;
- ``rfc6455_broadcast``: ours, ``rfc6455.server`` with ``Server.broadcast``, to separate
  what the runtime costs from what chatd adds (storage, presence, acknowledgements).

``bench/load.py compare`` starts those its implementation tables list.
"""

from __future__ import annotations

import argparse
import json
import resource
import ssl
import time

import tls

__all__ = ["BACKLOG", "Numbering", "parse_args", "raise_nofile_limit", "server_ssl_context"]

#: Listen backlog for every server in the comparison, the same as ``rfc6455.server``'s
#: default, so that a burst of connections is not refused by one and queued by another.
BACKLOG = 1024


def parse_args(prog: str, description: str, *, tls_options: bool = False) -> argparse.Namespace:
    """The command line every peer takes: ``--host`` (127.0.0.1) and ``--port``.

    With ``tls_options`` (the echo peers), also ``--certfile`` and ``--keyfile``, both or
    neither: a key without a certificate is refused rather than served as ``ws://``.
    Peers without them reject the options instead of ignoring them.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    if tls_options:
        parser.add_argument("--certfile", help="serve wss:// with this certificate chain (PEM)")
        parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    args = parser.parse_args()
    if tls_options and bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    return args


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context for ``--certfile``/``--keyfile``, or None for ``ws://``.

    Built by ``tls.server_context`` (TLS 1.2 minimum, ALPN ``http/1.1``), the same
    protocol versions and ALPN that ``rfc6455.echo`` sets up, so every server negotiates
    the same TLS; exits with a message when the files cannot be loaded.
    """
    if not getattr(args, "certfile", None):
        return None
    try:
        return tls.server_context(args.certfile, args.keyfile)
    except OSError as error:  # ssl.SSLError too: a key that does not match, bad PEM
        raise SystemExit(f"cannot load the certificate {args.certfile}: {error}") from error


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Numbering:
    """The one room's sequence, shared by every broadcast peer so that each does the same
    work per message: a client's published ``message`` becomes chatd's wire format
    (docs/protocol.md), numbered; anything else is ignored.
    """

    def __init__(self) -> None:
        self.seq = 0

    def wire(self, sender: str, raw: str | bytes) -> str | None:
        """The numbered message to send to every member, or None to ignore ``raw``."""
        try:
            message = json.loads(raw)
        except ValueError:  # UnicodeDecodeError too: not every library validates text
            return None
        if not isinstance(message, dict) or message.get("type") != "message":
            return None
        self.seq += 1
        wire = {
            "type": "message",
            "room": message.get("room"),
            "seq": self.seq,
            "ts": time.time_ns() // 1_000_000,
            "from": sender,
            "text": message.get("text"),
            "kind": "text",
            "id": message.get("id"),
        }
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False)
