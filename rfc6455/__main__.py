"""``python -m rfc6455 URL``: an interactive WebSocket client for the command line.

Lines typed are sent as text messages; messages received are printed as they arrive::

    python -m rfc6455 ws://127.0.0.1:9001/
    python -m rfc6455 wss://localhost:8443/ws --cafile "$(mkcert -CAROOT)/rootCA.pem"
    printf 'hello\\n/ping\\n' | python -m rfc6455 ws://127.0.0.1:9001/ --wait 0.5

Commands: ``/ping [PAYLOAD]``, ``/binary HEX``, ``/close [CODE [REASON]]``, ``/help``;
``//text`` sends ``/text``. Messages go to stdout (marked ``<`` received and ``>`` sent
when stdout is a terminal, or with ``--prefix``); notices about the connection go to
stderr. Exit status: 0 after a normal close (1000 or 1001, or a ``/close`` the server
answered), 1 for any other close or a failure to connect, 130 after Ctrl-C.

One thread owns the ``Client`` (it is not thread-safe): it alternates between reading
the socket for a short while and sending the lines a stdin thread has queued.
"""

from __future__ import annotations

import argparse
import queue
import signal
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import TextIO

from rfc6455.client import DEFAULT_TIMEOUT, Client, ConnectionClosed
from rfc6455.codes import CloseCode
from rfc6455.errors import InvalidHandshake, LocalProtocolError, WebSocketError
from rfc6455.events import BinaryMessage, CloseReceived, Event, Pong, TextMessage

#: Seconds the socket is read before the stdin queue is looked at again (send latency).
POLL_INTERVAL = 0.05
#: Binary messages up to this many bytes are printed in full as hex.
MAX_HEX_BYTES = 64
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Server close codes that end the program with status 0.
_OK_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY})

HELP = """\
commands:
  /ping [PAYLOAD]          send a ping; its pong is printed with the round-trip time
  /binary HEX              send a binary message (e.g. /binary 00ff)
  /close [CODE [REASON]]   close with CODE (default 1000) and exit
  /help                    this text
  //TEXT                   send "/TEXT" as a text message
anything else is sent as a text message"""


def describe_binary(data: bytes) -> str:
    """Show a binary message as hex, cut after ``MAX_HEX_BYTES`` bytes."""
    if len(data) <= MAX_HEX_BYTES:
        return f"<binary {len(data)} bytes> {data.hex()}"
    return f"<binary {len(data)} bytes> {data[:MAX_HEX_BYTES].hex()}..."


def _read_lines(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    """Queue every line of ``stream`` without its newline, then None for its end."""
    for line in stream:
        lines.put(line.rstrip("\r\n"))
    lines.put(None)


class Session:
    """The command loop: one ``Client``, the stdin queue, and where output goes."""

    def __init__(
        self, client: Client, *, prefix: bool, echo_sent: bool, out: TextIO, err: TextIO
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.echo_sent = echo_sent
        self.out = out
        self.err = err
        self.pings_sent: dict[bytes, float] = {}
        #: Set by the SIGINT handler; the loop then closes politely.
        self.interrupted = threading.Event()
        #: Set once the connection is over: the exit status.
        self.exit_status: int | None = None

    # --- output ------------------------------------------------------------------------

    def show(self, mark: str, text: str) -> None:
        """Print a message line, marked ``<`` or ``>`` when prefixes are on."""
        print(f"{mark} {text}" if self.prefix else text, file=self.out, flush=True)

    def notice(self, text: str) -> None:
        """Tell the user about the connection (on stderr, so stdout stays data)."""
        print(text, file=self.err, flush=True)

    def show_sent(self, text: str) -> None:
        """Print what we sent, when that is not already on the screen."""
        if self.echo_sent:
            self.show(">", text)

    def show_event(self, event: Event) -> None:
        """Print what arrived; a close frame ends the session."""
        if isinstance(event, TextMessage):
            self.show("<", event.data)
        elif isinstance(event, BinaryMessage):
            self.show("<", describe_binary(event.data))
        elif isinstance(event, Pong):
            sent = self.pings_sent.pop(event.payload, None)
            rtt = "" if sent is None else f" ({(time.monotonic() - sent) * 1000:.1f} ms)"
            payload = event.payload.decode("utf-8", "backslashreplace")
            self.show("<", f"pong {payload}".rstrip() + rtt)
        elif isinstance(event, CloseReceived):
            self.closed(event.code, event.reason)

    def closed(self, code: int, reason: str, *, by_us: bool = False) -> None:
        """The closing handshake is over: 0 for 1000/1001 from the server, or for our close
        that the server answered; 1 otherwise."""
        who = "closed" if by_us else "closed by the server"
        self.notice(f"{who}: {code} {reason}".rstrip())
        if self.exit_status is None:
            ok = code != CloseCode.ABNORMAL_CLOSURE if by_us else code in _OK_CODES
            self.exit_status = 0 if ok else 1

    # --- receiving -----------------------------------------------------------------------

    def receive_for(self, seconds: float) -> None:
        """Print what arrives during ``seconds`` (at least one short read)."""
        deadline = time.monotonic() + seconds
        while self.exit_status is None and not self.interrupted.is_set():
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                event = self.client.recv_event(timeout=min(remaining, POLL_INTERVAL))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return
                continue
            except ConnectionClosed as closed:
                self.connection_lost(closed)
                return
            self.show_event(event)

    def connection_lost(self, closed: ConnectionClosed) -> None:
        """The connection ended without a close frame we saw (1006, or a protocol error)."""
        if self.exit_status is None:
            self.notice(f"connection lost: {closed.code} {closed.reason}".rstrip())
            self.exit_status = 1

    # --- sending -------------------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        """Send ``line`` as a text message, or run the command it holds."""
        if not line.startswith("/") or line.startswith("//"):
            text = line[1:] if line.startswith("//") else line
            self.client.send_text(text)
            self.show_sent(text)
            return
        command, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if command == "ping":
            payload = argument.encode("utf-8")
            try:
                self.client.ping(payload)
            except LocalProtocolError as error:
                self.notice(f"cannot ping: {error}")
                return
            self.pings_sent[payload] = time.monotonic()
            self.show_sent(f"ping {argument}".rstrip())
        elif command == "binary":
            try:
                data = bytes.fromhex(argument)
            except ValueError:
                self.notice(f"not hex: {argument!r} (e.g. /binary 00ff)")
                return
            self.client.send_binary(data)
            self.show_sent(describe_binary(data))
        elif command == "close":
            self.close_command(argument)
        elif command == "help":
            self.notice(HELP)
        else:
            self.notice(f"unknown command /{command}; /help lists them, //text sends /text")

    def close_command(self, argument: str) -> None:
        """``/close [CODE [REASON]]``: run the closing handshake, print what was left."""
        code_text, _, reason = argument.partition(" ")
        try:
            code = int(code_text) if code_text else CloseCode.NORMAL_CLOSURE
        except ValueError:
            self.notice(f"not a close code: {code_text!r}")
            return
        try:
            self.close(code, reason.strip())
        except LocalProtocolError as error:
            self.notice(f"cannot close: {error}")

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code``, print the messages that came before the server's close."""
        client = self.client
        client.close(code, reason)
        while True:
            try:
                event = client.recv_event(timeout=POLL_INTERVAL)
            except (ConnectionClosed, TimeoutError):
                break
            if not isinstance(event, CloseReceived):
                self.show_event(event)
        self.closed(
            client.close_code or CloseCode.ABNORMAL_CLOSURE, client.close_reason, by_us=True
        )

    # --- the loop ------------------------------------------------------------------------

    def run(self, lines: queue.Queue[str | None], wait: float) -> int:
        """Alternate between the socket and stdin until the connection is over."""
        while self.exit_status is None:
            if self.interrupted.is_set():
                self.interrupt()
                break
            self.receive_for(POLL_INTERVAL)
            while self.exit_status is None:
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    self.receive_for(wait)
                    if self.exit_status is None and not self.interrupted.is_set():
                        self.close()  # sets exit_status
                    break
                try:
                    self.handle_line(line)
                except ConnectionClosed as closed:
                    self.receive_for(0)  # a close frame may explain it
                    self.connection_lost(closed)
        assert self.exit_status is not None
        return self.exit_status

    def interrupt(self) -> None:
        """Ctrl-C: close with 1000, briefly, and end with ``EXIT_INTERRUPTED``."""
        self.notice("interrupted; closing")
        with suppress(OSError, WebSocketError):
            self.client.close(CloseCode.NORMAL_CLOSURE, timeout=min(self.client.timeout, 2.0))
        self.exit_status = EXIT_INTERRUPTED


def ssl_context_for(args: argparse.Namespace, err: TextIO) -> ssl.SSLContext | None:
    """The TLS context for ``wss://``: system CAs, ``--cafile``, or none (``--insecure``)."""
    if not args.url.lower().startswith("wss:"):
        return None
    if args.insecure:
        print(
            "WARNING: --insecure: the server's certificate is NOT checked; anyone on the "
            "path can read and change this connection",
            file=err,
            flush=True,
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=args.cafile)


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as a pair; ``argparse`` reports the ``ValueError``."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError(text)
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rfc6455",
        description="An interactive WebSocket client: lines typed are sent as text messages.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="ws:// or wss:// URL")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        type=parse_header,
        metavar='"NAME: VALUE"',
        help="an extra request header (repeatable)",
    )
    parser.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="offer this subprotocol (repeatable; the one chosen is printed)",
    )
    parser.add_argument("--origin", help="send this Origin header")
    parser.add_argument("--cafile", help="trust this CA (PEM) for wss://, e.g. mkcert's rootCA.pem")
    parser.add_argument(
        "--insecure", action="store_true", help="do not check the certificate (testing only)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"for connecting and for each send (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--no-deflate", action="store_true", help="do not offer compression")
    parser.add_argument(
        "--batch", action="store_true", help="non-interactive even when stdin is a terminal"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="after stdin ends, wait this long for replies before closing (default 1.0)",
    )
    parser.add_argument("--prefix", action="store_true", help="mark messages with < and >")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the client; return the exit status."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.insecure and args.cafile:
        parser.error("--insecure and --cafile contradict each other")
    interactive = stdin.isatty() and not args.batch
    try:
        ssl_context = ssl_context_for(args, err)
    except OSError as error:  # ssl.SSLError too: not a PEM file
        print(f"cannot load the CA file {args.cafile}: {error}", file=err)
        return 1
    try:
        client = Client.connect(
            args.url,
            timeout=args.timeout,
            ssl_context=ssl_context,
            subprotocols=args.subprotocol,
            deflate=not args.no_deflate,
            origin=args.origin,
            extra_headers=args.header,
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ssl.SSLCertVerificationError as error:
        hint = "" if args.cafile else "; for a private CA (mkcert's) pass --cafile FILE"
        print(f"TLS certificate verification failed: {error.verify_message}{hint}", file=err)
        return 1
    except InvalidHandshake as error:
        status = f"HTTP {error.status}" if error.status else "a malformed response"
        print(f"the server refused the handshake with {status}: {error.reason}", file=err)
        return 1
    except (OSError, ValueError, WebSocketError) as error:  # TimeoutError, SSLError too
        print(f"cannot connect to {args.url}: {error}", file=err)
        return 1

    prefix = args.prefix or out.isatty()
    session = Session(
        client,
        prefix=prefix,
        # A terminal already shows what was typed; plain output is only what arrived.
        echo_sent=prefix and not interactive,
        out=out,
        err=err,
    )
    if client.subprotocol is not None:
        session.notice(f"subprotocol: {client.subprotocol}")
    elif args.subprotocol:
        session.notice("the server chose no subprotocol")
    if interactive:
        session.notice(f"connected to {args.url}; /help for commands, Ctrl-D to quit")
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(stdin, lines), daemon=True).start()
    if threading.current_thread() is not threading.main_thread():
        return session.run(lines, args.wait)  # signal handlers belong to the main thread
    # Ctrl-C only raises a flag: a KeyboardInterrupt could cut a frame in half.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: session.interrupted.set())
    try:
        return session.run(lines, args.wait)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
