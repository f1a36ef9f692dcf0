"""A minimal broadcast chat server on the ``websockets`` library's asyncio implementation.

``python -m bench.peers.websockets_broadcast --port P``. Clients connect to
``/ws?name=NAME`` and all share one room. Every text message that parses as
``{"type": "message", "room": ..., "text": ..., "id": ...}`` is numbered and sent to
every connected client, the sender included, in chatd's wire format (docs/protocol.md)::

    {"type":"message","room":R,"seq":N,"ts":MS,"from":NAME,"text":T,"kind":"text","id":I}

with ``websockets.broadcast``, the library's fastest path (no ``await`` per client).
Anything else is ignored: no welcome, no presence, no storage, no acknowledgement, so
this is a floor for what a broadcast costs on ``websockets``, not a chat server.
Settings are the library's defaults except compression (off, as in chatd's comparison)
and the listen backlog (``BACKLOG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench.peers import BACKLOG, Numbering, parse_args, raise_nofile_limit


class Room:
    """The one room: who is connected, and the last sequence number given out."""

    def __init__(self) -> None:
        self.members: set[ServerConnection] = set()
        self.numbering = Numbering()

    async def serve(self, websocket: ServerConnection) -> None:
        """Join the room, broadcast what the client publishes, leave on close."""
        assert websocket.request is not None
        query = parse_qs(urlsplit(websocket.request.path).query)
        name = query.get("name", ["guest"])[0]
        self.members.add(websocket)
        try:
            with contextlib.suppress(ConnectionClosed):
                async for text in websocket:
                    self.publish(name, text)
        finally:
            self.members.discard(websocket)

    def publish(self, name: str, text: str | bytes) -> None:
        """Number a client's ``message`` and send it to every member; ignore the rest."""
        wire = self.numbering.wire(name, text)
        if wire is not None:
            broadcast(self.members, wire)


def only_ws(connection: ServerConnection, request: Request) -> Response | None:
    """Refuse every path but ``/ws`` with a 404, as chatd does."""
    if urlsplit(request.path).path != "/ws":
        return connection.respond(404, "no WebSocket endpoint here; use /ws\n")
    return None


async def serve_until_stopped(host: str, port: int) -> None:
    """Listen, say ``ready``, and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    room = Room()
    async with serve(
        room.serve, host, port, compression=None, backlog=BACKLOG, process_request=only_ws
    ):
        print("ready", flush=True)
        await stop


def main() -> None:
    """Run the server."""
    args = parse_args("python -m bench.peers.websockets_broadcast", __doc__.split("\n")[0])
    raise_nofile_limit()
    asyncio.run(serve_until_stopped(args.host, args.port))


if __name__ == "__main__":
    main()
