"""``python -m tls``: make (or reuse) certificates for local ``wss://`` and say how to trust them.

    python -m tls [--dir DIR] [--host HOST ...] [--force] [--no-mkcert]

Uses mkcert when it is installed, else a local CA kept in the same directory; see
``tls.mkcert`` for the file layout. ``main`` takes an argument list so that a
``chatd cert`` subcommand can run it unchanged.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tls.mkcert import (
    DEFAULT_HOSTS,
    CertificateFiles,
    MkcertError,
    ensure_certificates,
    trust_instructions,
)

DEFAULT_DIRECTORY = Path("var/tls")
#: How to serve wss:// with the files, as printed last (``{certfile}``, ``{keyfile}``).
ECHO_HINT = "python -m rfc6455.echo --port 8443 --certfile {certfile} --keyfile {keyfile}"


def build_parser(prog: str = "python -m tls") -> argparse.ArgumentParser:
    """The command line of ``python -m tls``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Make a TLS certificate for local wss:// development, with mkcert when "
        "it is installed and with a local CA otherwise, and print how to trust its CA.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIRECTORY,
        help=f"directory for cert.pem, key.pem and ca.pem (default: {DEFAULT_DIRECTORY})",
    )
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="HOST",
        help="a host name or IP address the certificate must name; repeat for more "
        f"(default: {' '.join(DEFAULT_HOSTS)})",
    )
    parser.add_argument(
        "--force", action="store_true", help="issue a new certificate even if one is still good"
    )
    parser.add_argument(
        "--no-mkcert", action="store_true", help="use the local CA even if mkcert is installed"
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    prog: str = "python -m tls",
    serve_hint: str = ECHO_HINT,
    open_hint: str = "wss://localhost:8443/",
) -> int:
    """Run the command; returns the exit status (0 on success, 1 on failure).

    ``serve_hint`` is the command printed last, with ``{certfile}`` and ``{keyfile}``
    filled in: ``chatd cert`` names chatd's own.
    """
    arguments = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    hosts = tuple(arguments.hosts) if arguments.hosts else DEFAULT_HOSTS
    try:
        files = ensure_certificates(
            arguments.dir, hosts, prefer_mkcert=not arguments.no_mkcert, force=arguments.force
        )
    except (MkcertError, OSError, ValueError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    print(describe(files, serve_hint, open_hint))
    return 0


def describe(
    files: CertificateFiles,
    serve_hint: str = ECHO_HINT,
    open_hint: str = "wss://localhost:8443/",
) -> str:
    """What was made, how to trust it, and how to serve ``wss://`` with it."""
    certfile = shlex.quote(str(files.certfile.resolve()))
    keyfile = shlex.quote(str(files.keyfile.resolve()))
    return (
        f"Certificate issued by {files.issuer}:\n"
        f"  certificate: {files.certfile.resolve()}\n"
        f"  private key: {files.keyfile.resolve()}\n"
        f"  CA to trust: {files.cafile.resolve()}\n"
        "\n"
        f"{trust_instructions(files)}\n"
        "\n"
        "Serve wss:// with it:\n"
        f"    {serve_hint.format(certfile=certfile, keyfile=keyfile)}\n"
        f"and open {open_hint}"
    )


if __name__ == "__main__":
    sys.exit(main())
