"""``python -m chatd``: the chat daemon, and the accounts of its database.

``python -m chatd [serve] [--host H] [--port P] [--db FILE] [--auth open|required] ...``
serves; with no flags it runs on its embedded defaults (SQLite at ``./var/chatd.sqlite3``,
one process, http://127.0.0.1:8080, guests pick a name), which is what ``make run`` does.
``python -m chatd user add|passwd|list [NAME] [--db FILE]`` manages accounts (the
password read without echo, or one line from stdin). The full configuration (a console
script, environment variables, a TOML file) comes with the operations work.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sqlite3
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from chatd import __version__
from chatd.accounts import user_command
from chatd.app import ChatServer
from chatd.auth import AuthError
from chatd.config import AUTH_MODES, ChatSettings
from chatd.limits import Limits
from chatd.origins import OriginPolicy
from chatd.storage import StorageError
from tls import server_context
from tls.__main__ import DEFAULT_DIRECTORY as TLS_DIRECTORY
from tls.__main__ import main as tls_main
from tls.mkcert import DEFAULT_HOSTS, ensure_certificates

logger = logging.getLogger("chatd")

#: ``make run``'s database; under systemd it lives in the state directory.
DEFAULT_DB = "var/chatd.sqlite3"


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` (the default: serve until SIGINT or SIGTERM) or ``user`` (accounts)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["user"]:
        # chatd user add|passwd|list NAME [--db FILE]: the accounts of a database.
        database = argparse.ArgumentParser(add_help=False)
        database.add_argument("--db", default=DEFAULT_DB)
        known, rest = database.parse_known_args(arguments[1:])
        return user_command(rest, db_path=known.db)
    if arguments[:1] == ["cert"]:
        # chatd cert [--dir DIR] [--host HOST ...]: certificates for wss://, and how to
        # trust their CA (mkcert when installed, else a local CA).
        return tls_main(
            arguments[1:],
            prog=f"{_prog()} cert",
            serve_hint=_prog() + " --certfile {certfile} --keyfile {keyfile}",
        )
    if arguments[:1] == ["serve"]:
        arguments = arguments[1:]
    return serve(arguments)


def _prog() -> str:
    """``chatd`` when run as the console script, else ``python -m chatd``."""
    return "chatd" if Path(sys.argv[0]).name == "chatd" else "python -m chatd"


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context from --certfile/--keyfile or --tls, or None for plain."""
    if (args.certfile is None) != (args.keyfile is None):
        raise ValueError("--certfile and --keyfile go together")
    if args.certfile is not None:
        return server_context(args.certfile, args.keyfile)
    if not args.tls:
        return None
    hosts = list(DEFAULT_HOSTS)
    if args.host not in hosts and args.host not in ("0.0.0.0", "::"):
        hosts.append(args.host)
    files = ensure_certificates(args.cert_dir, hosts)
    logger.info("TLS certificate %s (issued by %s)", files.certfile, files.issuer)
    return server_context(files.certfile, files.keyfile)


def serve(argv: Sequence[str]) -> int:
    """Parse the serve command line and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} [serve]",
        description="the chatd chat server",
        epilog="Accounts: python -m chatd user add|passwd|list [NAME] [--db FILE]",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default 8080, or 8443 with TLS")
    secure = parser.add_argument_group("TLS (wss:// and https://)")
    secure.add_argument(
        "--tls",
        action="store_true",
        help="serve TLS with a certificate from --cert-dir, made there if missing "
        "(mkcert when installed, else a local CA: see 'python -m chatd cert')",
    )
    secure.add_argument("--cert-dir", default=str(TLS_DIRECTORY), help="(default %(default)s)")
    secure.add_argument("--certfile", help="serve TLS with this certificate chain (PEM)")
    secure.add_argument("--keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--db", default=DEFAULT_DB, help="the SQLite database file")
    auth = parser.add_argument_group("authentication")
    auth.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="open",
        help="open: guests pick a name (development); required: log in first",
    )
    auth.add_argument(
        "--secret-file",
        help="the token signing secret, made with mode 0600 if missing "
        "(default: chatd-secret beside the database)",
    )
    auth.add_argument(
        "--token-ttl", type=float, default=12 * 3600.0, help="seconds a login lasts (12 h)"
    )
    auth.add_argument(
        "--registration",
        action="store_true",
        help="let visitors create accounts (POST /api/auth/register)",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    defaults = Limits()
    protection = parser.add_argument_group("protection")
    protection.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a page origin (scheme://host[:port]) besides chatd's own that may connect "
        "(repeatable)",
    )
    protection.add_argument(
        "--refuse-missing-origin",
        action="store_true",
        help="refuse handshakes without an Origin header (non-browser clients)",
    )
    protection.add_argument(
        "--rate-limit",
        type=float,
        default=defaults.message_rate,
        metavar="PER_SECOND",
        help=f"messages per second per connection, 0 for none (default {defaults.message_rate:g})",
    )
    protection.add_argument(
        "--rate-burst",
        type=int,
        default=defaults.message_burst,
        help=f"messages allowed at once above the rate (default {defaults.message_burst})",
    )
    protection.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help=f"WebSocket connections in all, 0 for no limit (default {defaults.max_connections})",
    )
    protection.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=defaults.max_connections_per_ip,
        help="WebSocket connections per client address (IPv6: per /64), 0 for no limit "
        f"(default {defaults.max_connections_per_ip})",
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")

    try:
        context = _tls_context(args)
    except (OSError, ssl.SSLError, ValueError) as error:
        print(f"cannot set up TLS: {error}", file=sys.stderr)
        return 1
    port = args.port if args.port is not None else (8443 if context is not None else 8080)
    settings = ChatSettings(
        tls=context is not None,
        auth=args.auth,
        secret_file=args.secret_file,
        token_ttl=args.token_ttl,
        registration=args.registration,
        allowed_origins=tuple(args.allow_origin),
        allow_missing_origin=not args.refuse_missing_origin,
        limits=dataclasses.replace(
            defaults,
            message_rate=args.rate_limit,
            message_burst=args.rate_burst,
            max_connections=args.max_connections,
            max_connections_per_ip=args.max_connections_per_ip,
        ),
    )
    try:
        settings.validate()
        OriginPolicy.from_config(settings.allowed_origins, allow_missing=True)
    except ValueError as error:
        print(f"bad setting: {error}", file=sys.stderr)
        return 2
    try:
        chat = ChatServer(args.db, settings=settings)
    except AuthError as error:
        print(f"cannot use the token secret: {error}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error, StorageError) as error:
        print(f"cannot open the database {args.db}: {error}", file=sys.stderr)
        return 1
    try:
        chat.server.listen(args.host, port, ssl_context=context)
    except OSError as error:
        print(f"cannot listen on {args.host}:{port}: {error}", file=sys.stderr)
        chat.close()
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        chat.server.request_shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host = f"[{args.host}]" if ":" in args.host else args.host
    logger.info(
        "chatd %s listening on %s://%s:%d/ (database %s)",
        __version__,
        "https" if context is not None else "http",
        host,
        chat.server.addresses[0][1],
        args.db,
    )
    try:
        chat.server.serve_forever()
    finally:
        chat.close()
    logger.info("chatd stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
