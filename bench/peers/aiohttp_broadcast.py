"""A minimal broadcast chat server on ``aiohttp``'s ``web.WebSocketResponse``.

``python -m bench.peers.aiohttp_broadcast --port P``. The protocol is
``bench.peers.websockets_broadcast``'s: clients connect to ``/ws?name=NAME`` (any other
path gets aiohttp's 404) and share one room; every message that parses as
``{"type": "message", "room": ..., "text": ..., "id": ...}`` is numbered and sent to
every connected client, the sender included, in chatd's wire format::

    {"type":"message","room":R,"seq":N,"ts":MS,"from":NAME,"text":T,"kind":"text","id":I}

Anything else is ignored. aiohttp has no broadcast call and every send is a coroutine.
The fastest correct way we found: encode the JSON to bytes once, then
``await member.send_frame(payload, WSMsgType.TEXT)`` for each member in turn. Without
compression ``send_frame`` writes to the transport before its first ``await`` and only
suspends to drain a member whose transport paused (above 64 KiB buffered), so the loop
rarely yields; ``send_str`` would encode the text again per member, and ``gather`` or a
task per member costs far more than the write. Because a paused member does suspend it,
broadcasts hold a lock: otherwise a later message could overtake an earlier one on the
members after the paused one, and every client must see ``seq`` in order. The price is
aiohttp's own backpressure: a member that stops reading stalls the room until its
buffer drains. Settings are those of ``bench.peers.aiohttp_echo``.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import WSMsgType, web

from bench.peers import BACKLOG, Numbering, parse_args, raise_nofile_limit


class Room:
    """The one room: who is connected, and the last sequence number given out."""

    def __init__(self) -> None:
        self.members: set[web.WebSocketResponse] = set()
        self.numbering = Numbering()
        self.sending = asyncio.Lock()  # one broadcast at a time keeps seq in order

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """Join the room, broadcast what the client publishes, leave on close."""
        name = request.query.get("name", "guest")
        websocket = web.WebSocketResponse(compress=False)
        await websocket.prepare(request)
        self.members.add(websocket)
        try:
            async for message in websocket:
                if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
                    await self.publish(name, message.data)
        finally:
            self.members.discard(websocket)
        return websocket

    async def publish(self, name: str, text: str | bytes) -> None:
        """Number a client's ``message`` and send it to every member; ignore the rest."""
        async with self.sending:  # numbered and sent in one order
            wire = self.numbering.wire(name, text)
            if wire is None:
                return
            payload = wire.encode()
            # A copy: members join and leave while a paused member is drained.
            for member in list(self.members):
                try:  # noqa: SIM105 - free in 3.11, unlike a suppress() per member
                    await member.send_frame(payload, WSMsgType.TEXT)
                except ConnectionError:  # closing: it leaves the room on its own
                    pass


async def serve_until_stopped(host: str, port: int) -> None:
    """Listen, say ``ready``, and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    app = web.Application()
    room = Room()
    app.router.add_get("/ws", room.serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG, shutdown_timeout=1.0)
    await site.start()
    print("ready", flush=True)
    try:
        await stop
    finally:
        await runner.cleanup()


def main() -> None:
    """Run the server."""
    args = parse_args("python -m bench.peers.aiohttp_broadcast", __doc__.split("\n")[0])
    raise_nofile_limit()
    asyncio.run(serve_until_stopped(args.host, args.port))


if __name__ == "__main__":
    main()
