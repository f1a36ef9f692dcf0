"""A minimal broadcast chat server on ``picows``.

``python -m bench.peers.picows_broadcast --port P``. The protocol is
``bench.peers.websockets_broadcast``'s: clients connect to ``/ws?name=NAME`` (any other
path gets a 404) and share one room; every message that parses as
``{"type": "message", "room": ..., "text": ..., "id": ...}`` is numbered and sent to
every connected client, the sender included, in chatd's wire format::

    {"type":"message","room":R,"seq":N,"ts":MS,"from":NAME,"text":T,"kind":"text","id":I}

Anything else is ignored. picows has no broadcast call; its fastest way to send one
payload to many transports is ``WSTransport.send_reuse_external_bytearray``: the JSON is
encoded once into a bytearray with room for the frame header in front, and each send
writes the (identical, unmasked) header there and gives the frame to the socket without
copying it into picows' write buffer first. Settings are those of
``bench.peers.picows_echo``; fragmented messages are reassembled by its
``MessageListener``.
"""

from __future__ import annotations

import asyncio
import signal
from urllib.parse import parse_qs, urlsplit

from picows import (
    WSCloseCode,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from bench.peers import BACKLOG, Numbering, parse_args, raise_nofile_limit
from bench.peers.picows_echo import MessageListener

#: Bytes reserved in front of a payload for the frame header: the most a header takes
#: (2 + 8 length bytes + 4 mask bytes), the minimum picows accepts.
HEADER_ROOM = 14


class Room:
    """The one room: who is connected, and the last sequence number given out."""

    def __init__(self) -> None:
        self.members: set[WSTransport] = set()
        self.numbering = Numbering()

    def publish(self, name: str, payload: memoryview | bytearray) -> None:
        """Number a client's ``message`` and send it to every member; ignore the rest."""
        wire = self.numbering.wire(name, bytes(payload))  # picows does not validate text
        if wire is None:
            return
        frame = bytearray(HEADER_ROOM)
        frame += wire.encode()
        for transport in self.members:
            # Sends at once or copies what the socket refused: the bytearray is reusable.
            transport.send_reuse_external_bytearray(WSMsgType.TEXT, frame, HEADER_ROOM)


class MemberListener(MessageListener):
    """One client: a member of the room from the handshake until it disconnects."""

    def __init__(self, room: Room, name: str) -> None:
        super().__init__()
        self.room = room
        self.name = name

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        self.room.members.add(transport)

    def pause_writing(self) -> None:
        """Keep reading: ``websockets.broadcast`` does not wait for a slow member either."""

    def resume_writing(self) -> None:
        """Nothing was paused."""

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.room.members.discard(transport)

    def on_message(
        self, transport: WSTransport, msg_type: WSMsgType, payload: memoryview | bytearray
    ) -> None:
        self.room.publish(self.name, payload)


def only_ws(room: Room, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
    """picows' listener factory: refuse every path but ``/ws`` with a 404, as chatd does."""
    target = urlsplit(request.path.decode("latin-1"))
    if target.path != "/ws":
        response = WSUpgradeResponse.create_error_response(
            404, b"no WebSocket endpoint here; use /ws\n"
        )
        return WSUpgradeResponseWithListener(response, None)
    name = parse_qs(target.query).get("name", ["guest"])[0]
    return MemberListener(room, name)


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
    server = await ws_create_server(
        lambda request: only_ws(room, request), host, port, backlog=BACKLOG
    )
    print("ready", flush=True)
    try:
        await stop
    finally:
        server.close()
        for transport in list(room.members):
            transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect()


def main() -> None:
    """Run the server."""
    args = parse_args("python -m bench.peers.picows_broadcast", __doc__.split("\n")[0])
    raise_nofile_limit()
    asyncio.run(serve_until_stopped(args.host, args.port))


if __name__ == "__main__":
    main()
