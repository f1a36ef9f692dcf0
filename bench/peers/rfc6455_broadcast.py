"""A minimal broadcast chat server on our own ``rfc6455.server``.

``python -m bench.peers.rfc6455_broadcast --port P``. The protocol is
``bench.peers.websockets_broadcast``'s: clients connect to ``/ws?name=NAME`` (any other
path gets a 404) and share one room; every message that parses as
``{"type": "message", "room": ..., "text": ..., "id": ...}`` is numbered and sent to
every connected client, the sender included, in chatd's wire format::

    {"type":"message","room":R,"seq":N,"ts":MS,"from":NAME,"text":T,"kind":"text","id":I}

with ``Server.broadcast``: the frame is encoded once (``Server.prepare``) and queued on
every member, and each member's frames of one loop tick leave in one ``send``. Anything
else is ignored. Beside chatd, it shows what the runtime's broadcast costs without
chatd's storage, presence and acknowledgements; beside the other peers, it is the same
work on another library.

Settings are ``python -m rfc6455.echo --no-deflate``'s, as ``bench/load.py compare``
runs it: compression off, 64 MiB max message, a write limit of 65 MiB (a client is a
slow consumer only past that, where the other peers buffer without limit or wait),
keepalive pings every 20 s with a 20 s timeout, logging at WARNING.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from bench.peers import BACKLOG, Numbering, parse_args, raise_nofile_limit
from rfc6455.errors import InvalidHandshake
from rfc6455.http import Request
from rfc6455.server import Handler, Server, ServerConfig, ServerConnection

#: ``rfc6455.echo``'s default ``--max-message-size``.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024


class RoomHandler(Handler):
    """The one room: who is connected, and the last sequence number given out.

    A connection's ``context`` is its name, from the query string.
    """

    def __init__(self) -> None:
        self.members: set[ServerConnection] = set()
        self.numbering = Numbering()

    def on_connect(
        self, connection: ServerConnection, request: Request
    ) -> Sequence[tuple[str, str]]:
        """Refuse every path but ``/ws`` with a 404, as chatd does; remember the name."""
        if request.path != "/ws":
            raise InvalidHandshake("no WebSocket endpoint here; use /ws", 404)
        connection.context = request.query.get("name", "guest")
        return ()

    def on_open(self, connection: ServerConnection) -> None:
        self.members.add(connection)

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        self.members.discard(connection)

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        """Number a client's ``message`` and send it to every member; ignore the rest."""
        wire = self.numbering.wire(connection.context, message)
        if wire is not None:
            connection.server.broadcast(self.members, wire)


def main() -> int:
    """Listen, say ``ready``, and serve until SIGTERM or SIGINT."""
    args = parse_args("python -m bench.peers.rfc6455_broadcast", __doc__.split("\n")[0])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise_nofile_limit()
    config = ServerConfig(
        max_message_size=MAX_MESSAGE_SIZE,
        write_limit=MAX_MESSAGE_SIZE + 1024 * 1024,
        deflate=None,
        backlog=BACKLOG,
    )
    server = Server(RoomHandler(), config)
    try:
        server.listen(args.host, args.port)
    except OSError as error:
        print(f"cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        server.request_shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
