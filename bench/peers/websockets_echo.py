"""An echo server on the ``websockets`` library's asyncio implementation.

``python -m bench.peers.websockets_echo --port P [--certfile C --keyfile K]``, the two
files for ``wss://``. Settings are the library's defaults except compression (off, as in
the other servers of the comparison) and the listen backlog (``BACKLOG``): keepalive pings
every 20 s with a 20 s timeout, 1 MiB max message, a 16-frame receive queue, a 32 KiB
write limit, its C masking when built.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bench.peers import BACKLOG, parse_args, raise_nofile_limit, server_ssl_context


async def echo(websocket: ServerConnection) -> None:
    """Send every message back, as text or binary, as it came."""
    with contextlib.suppress(ConnectionClosed):
        async for message in websocket:
            await websocket.send(message)


async def serve_until_stopped(host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
    """Listen, say ``ready``, and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    async with serve(echo, host, port, compression=None, backlog=BACKLOG, ssl=ssl_context):
        print("ready", flush=True)
        await stop


def main() -> None:
    """Run the server."""
    args = parse_args(
        "python -m bench.peers.websockets_echo", __doc__.split("\n")[0], tls_options=True
    )
    ssl_context = server_ssl_context(args)
    raise_nofile_limit()
    asyncio.run(serve_until_stopped(args.host, args.port, ssl_context))


if __name__ == "__main__":
    main()
