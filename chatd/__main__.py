"""``python -m chatd``: the chat daemon, and the accounts of its database.

``python -m chatd [serve] [--host H] [--port P] [--db FILE] [--auth open|required] ...``
serves; with no flags it runs on its embedded defaults (SQLite at ``./var/chatd.sqlite3``,
one process, http://127.0.0.1:8080, guests pick a name), which is what ``make run`` does.
``python -m chatd user add|passwd|list [NAME] [--db FILE]`` manages accounts (the
password read without echo, or one line from stdin), ``cert`` makes certificates for
wss://, and ``check-config`` shows the effective configuration. Installed, the console
script ``chatd`` does the same; every setting also comes from ``CHATD_<NAME>`` and a TOML
file (chatd/options.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
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
from chatd.config import ChatSettings
from chatd.limits import Limits
from chatd.logs import configure_logging
from chatd.options import ConfigError, Loaded, add_flags, load
from chatd.origins import OriginPolicy
from chatd.storage import StorageError
from chatd.systemd import (
    ActivatedSocket,
    Notifier,
    SystemdError,
    is_tls_name,
    listen_fds,
    schedule_watchdog,
    watchdog_interval,
)
from rfc6455.http import HttpLimits
from rfc6455.server import ServerConfig
from tls import server_context
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
            open_hint="https://localhost:8443/ (the WebSocket is wss://localhost:8443/ws)",
        )
    if arguments[:1] == ["check-config"]:
        return check_config(arguments[1:])
    if arguments[:1] == ["serve"]:
        arguments = arguments[1:]
    return serve(arguments)


def _prog() -> str:
    """``chatd`` when run as the console script, else ``python -m chatd``."""
    return "chatd" if Path(sys.argv[0]).name == "chatd" else "python -m chatd"


def _certificate_hosts(config: Loaded) -> list[str]:
    """The names --tls's certificate must cover: localhost's, and the listen host."""
    hosts = list(DEFAULT_HOSTS)
    if config["host"] not in hosts and config["host"] not in ("0.0.0.0", "::"):
        hosts.append(config["host"])
    return hosts


#: Settings that take effect only at start: a reload that changes them says so.
RESTART_ONLY = (
    "host",
    "port",
    "db",
    "bus",
    "node_id",
    "tls",
    "cert_dir",
    "secret_file",
    "secret",
    "log_format",
    "max_message_size",
    "max_head_size",
    "max_headers",
    "handshake_timeout",
    "ping_interval",
    "ping_timeout",
    "close_timeout",
    "write_limit",
    "shutdown_timeout",
)


def _tls_context(config: Loaded) -> ssl.SSLContext | None:
    """The server's TLS context from certfile/keyfile or tls, or None for plain."""
    if config["certfile"] is not None:
        return server_context(config["certfile"], config["keyfile"])
    if not config["tls"]:
        return None
    files = ensure_certificates(config["cert_dir"], _certificate_hosts(config))
    logger.info("TLS certificate %s (issued by %s)", files.certfile, files.issuer)
    return server_context(files.certfile, files.keyfile)


EXAMPLES = """\
Every setting also comes from CHATD_<NAME> in the environment and from a TOML file
(--config; keys named like the flags: rate_limit = 5); flags win over the environment,
which wins over the file.

examples:
  {prog}                                   http://127.0.0.1:8080, guests pick a name
  {prog} user add alice                    an account (asks for the password)
  {prog} cert                              a certificate for wss://, and how to trust it
  {prog} --auth required --tls             https://127.0.0.1:8443, log in first
  {prog} --host 0.0.0.0 --port 80 --auth required --allow-origin https://chat.example
  CHATD_RATE_LIMIT=5 {prog} --config /etc/chatd/chatd.toml
  {prog} check-config --config /etc/chatd/chatd.toml   what would run, and why
"""


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} {command}",
        description="the chatd chat server"
        if command == "[serve]"
        else "validate the settings and print the effective configuration",
        epilog=EXAMPLES.format(prog=_prog()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser)
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    return parser


def _settings(config: Loaded, *, tls: bool) -> ChatSettings:
    """chatd's protections from the loaded configuration."""
    settings = ChatSettings(
        tls=tls,
        auth=config["auth"],
        secret_file=config["secret_file"],
        secret=config["secret"],
        token_ttl=config["token_ttl"],
        registration=config["registration"],
        login_attempts=config["login_attempts"],
        login_window=config["login_window"],
        allowed_origins=config["allow_origin"],
        allow_missing_origin=not config["refuse_missing_origin"],
        history_on_join=config["history_on_join"],
        bus=config["bus"],
        node_id=config["node_id"],
        limits=dataclasses.replace(
            Limits(),
            message_rate=config["rate_limit"],
            message_burst=config["rate_burst"],
            max_connections=config["max_connections"],
            max_connections_per_ip=config["max_connections_per_ip"],
            max_rooms_per_connection=config["max_rooms"],
            max_message_bytes=config["max_message_size"],
        ),
    )
    settings.validate()
    OriginPolicy.from_config(settings.allowed_origins, allow_missing=True)
    return settings


def _server_config(config: Loaded) -> ServerConfig:
    """The runtime's limits and timeouts from the loaded configuration (0: none)."""
    return ServerConfig(
        handshake_timeout=config["handshake_timeout"],
        ping_interval=config["ping_interval"] or None,
        ping_timeout=config["ping_timeout"] or None,
        close_timeout=config["close_timeout"],
        write_limit=config["write_limit"],
        http_limits=HttpLimits(
            max_head_size=config["max_head_size"], max_headers=config["max_headers"]
        ),
    )


def _load(argv: Sequence[str], command: str) -> Loaded | int:
    """Parse and load the configuration, or the exit status after saying what is wrong."""
    args = _parser(command).parse_args(argv)
    try:
        config = load(args, os.environ)
        if (config["certfile"] is None) != (config["keyfile"] is None):
            raise ConfigError("certfile and keyfile go together")
        _settings(config, tls=False)
        _server_config(config)
    except (ConfigError, ValueError) as error:
        print(f"bad setting: {error}", file=sys.stderr)
        return 2
    return config


def check_config(argv: Sequence[str]) -> int:
    """``chatd check-config``: validate, then print every setting and where it came from."""
    config = _load(argv, "check-config")
    if isinstance(config, int):
        return config
    if config.config_file is not None:
        print(f"# config file: {config.config_file}")
    print(config.describe())
    return 0


def serve(argv: Sequence[str]) -> int:
    """Parse the serve command line and serve until SIGINT or SIGTERM."""
    config = _load(argv, "[serve]")
    if isinstance(config, int):
        return config
    configure_logging(config["log_level"], config["log_format"])
    notifier = Notifier.from_environment()
    try:
        activated = listen_fds()
    except SystemdError as error:
        print(f"cannot use the sockets systemd passed: {error}", file=sys.stderr)
        return 1
    try:
        context = _tls_context(config)
    except (OSError, ssl.SSLError, ValueError) as error:
        print(f"cannot set up TLS: {error}", file=sys.stderr)
        return 1
    port = config["port"] if config["port"] is not None else (8443 if context else 8080)
    database = config["db"]
    try:
        chat = ChatServer(
            database,
            _server_config(config),
            settings=_settings(config, tls=context is not None),
        )
    except AuthError as error:
        print(f"cannot use the token secret: {error}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error, StorageError) as error:
        print(f"cannot open the database {database}: {error}", file=sys.stderr)
        return 1
    try:
        where = _listen(chat, config, context, activated, port)
    except (OSError, SystemdError) as error:
        place = "on the sockets systemd passed" if activated else f"on {config['host']}:{port}"
        print(f"cannot listen {place}: {error}", file=sys.stderr)
        chat.close()
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        # SIGTERM: tell every client first (a system message), then close them with 1001
        # and drain within shutdown_timeout; the loop does both on its own thread.
        notifier.stopping("shutting down")
        # One callback, in this order: the announcement must be queued before the tick
        # that closes every connection (a busy loop would otherwise close first).
        chat.server.call_soon_threadsafe(begin_shutdown)

    def begin_shutdown() -> None:
        chat.hub.announce_shutdown()
        chat.server.request_shutdown()

    def hangup(signum: int, frame: FrameType | None) -> None:
        chat.server.call_soon_threadsafe(lambda: _reload(chat, argv, context, notifier, config))

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, hangup)
    logger.info("chatd %s listening on %s (database %s)", __version__, where, database)
    notifier.ready(f"serving on {where}")
    interval = watchdog_interval()
    if interval is not None:
        # Pinged from the loop itself: a loop that hangs stops the pings, and systemd
        # restarts the service.
        schedule_watchdog(chat.server, notifier, interval)
    try:
        chat.server.serve_forever(shutdown_timeout=config["shutdown_timeout"])
    finally:
        chat.close()
        notifier.close()
    logger.info("chatd stopped")
    return 0


def _listen(
    chat: ChatServer,
    config: Loaded,
    context: ssl.SSLContext | None,
    activated: list[ActivatedSocket],
    port: int,
) -> str:
    """Listen on the sockets systemd passed, or on host and port; say where."""
    if not activated:
        host = config["host"]
        chat.server.listen(host, port, ssl_context=context)
        scheme = "https" if context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{chat.server.addresses[0][1]}/"
    places = []
    for item in activated:
        tls = is_tls_name(item.name)
        if tls and context is None:
            raise SystemdError(
                f"systemd passed a socket named {item.name!r} for TLS, but TLS is not set "
                "up (--tls or --certfile/--keyfile)"
            )
        chat.server.add_socket(item.sock, ssl_context=context if tls else None)
        places.append(f"{item.name} {item.address}")
    logger.info("socket activation: host and port settings are not used")
    return ", ".join(places)


def _reload(
    chat: ChatServer,
    argv: Sequence[str],
    context: ssl.SSLContext | None,
    notifier: Notifier,
    started: Loaded,
) -> None:
    """SIGHUP: apply what may change while running (log level, origins, limits, the TLS
    certificate), keeping every connection; a bad configuration is logged and ignored.
    """
    notifier.reloading("reloading the configuration")
    config = _load(argv, "[serve]")
    if isinstance(config, int):
        logger.error("reload: the configuration is not valid; nothing changed")
        notifier.ready("reload failed: configuration not valid")
        return
    try:
        settings = _settings(config, tls=context is not None)
        if context is not None:
            certfile, keyfile = config["certfile"], config["keyfile"]
            if certfile is None:
                files = ensure_certificates(config["cert_dir"], _certificate_hosts(config))
                certfile, keyfile = files.certfile, files.keyfile
            # New handshakes get the new certificate; open connections keep theirs.
            context.load_cert_chain(certfile, keyfile)
    except (ConfigError, ValueError, OSError, ssl.SSLError) as error:
        logger.error("reload: %s; nothing changed", error)
        notifier.ready("reload failed")
        return
    logging.getLogger().setLevel(config["log_level"])
    chat.apply(settings)
    changed = [name for name in RESTART_ONLY if config[name] != started[name]]
    if changed:
        logger.warning("reload: %s take effect only after a restart", ", ".join(changed))
    logger.info("reload: configuration applied to %d connections", len(chat.server.connections))
    notifier.ready("reloaded")


if __name__ == "__main__":
    sys.exit(main())
