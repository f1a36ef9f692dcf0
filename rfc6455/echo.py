"""The echo server: every text and binary message comes back unchanged.

It is the standard conformance testee (Autobahn|Testsuite's fuzzing client talks to
it) and what ``make run`` starts until chatd exists::

    python -m rfc6455.echo --host 127.0.0.1 --port 9001 [--certfile C --keyfile K]
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from types import FrameType

from rfc6455.deflate import DeflateOptions
from rfc6455.http import Request
from rfc6455.server import Handler, HttpResponse, Server, ServerConfig, ServerConnection

logger = logging.getLogger("rfc6455.echo")


class EchoHandler(Handler):
    """Send every message back to its sender; log one line per connection."""

    def on_open(self, connection: ServerConnection) -> None:
        connection.context = 0  # messages echoed

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        logger.info(
            "%s: closed with %d%s after %d messages",
            connection.peer,
            code,
            f" ({reason})" if reason else "",
            connection.context or 0,
        )

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        connection.context = (connection.context or 0) + 1
        if isinstance(message, str):
            connection.send_text(message)
        else:
            connection.send_binary(message)

    def on_http(self, request: Request, body: bytes) -> HttpResponse:
        if request.path == "/":
            return HttpResponse(200, b"rfc6455 echo server: connect a WebSocket client here\n")
        return HttpResponse(404, b"not found\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m rfc6455.echo",
        description="The echo server: every text and binary message comes back unchanged.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--certfile", help="serve wss:// with this certificate chain (PEM)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--no-deflate", action="store_true", help="refuse permessage-deflate")
    # Conformance suites send 16 MiB messages; 64 MiB leaves room, as the issue asks.
    parser.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024)
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")  # never serve ws:// when wss:// was meant
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")

    ssl_context = None
    if args.certfile:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_context.set_alpn_protocols(["http/1.1"])
        try:
            ssl_context.load_cert_chain(args.certfile, args.keyfile)
        except OSError as error:  # ssl.SSLError too: a key that does not match, bad PEM
            print(f"cannot load the certificate {args.certfile}: {error}", file=sys.stderr)
            return 1
    config = ServerConfig(
        max_message_size=args.max_message_size,
        deflate=None if args.no_deflate else DeflateOptions(),
        # The conformance suite's largest messages are 16 MiB, echoed back at once.
        # Echoing the largest message at once must not count as a slow consumer.
        write_limit=args.max_message_size + 1024 * 1024,
    )
    server = Server(EchoHandler(), config)
    try:
        server.listen(args.host, args.port, ssl_context=ssl_context)
    except OSError as error:
        print(f"cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        server.request_shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    scheme = "wss" if ssl_context else "ws"
    logger.info("echo server listening on %s://%s:%d/", scheme, args.host, server.addresses[0][1])
    server.serve_forever()
    logger.info("echo server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
