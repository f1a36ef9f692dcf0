"""An echo server on ``aiohttp``'s ``web.WebSocketResponse``.

``python -m bench.peers.aiohttp_echo --port P [--certfile C --keyfile K]``, the two files
for ``wss://``. Settings are the library's defaults except compression
(``compress=False``, as in the other servers of the comparison), access logging (off) and
the listen backlog (``BACKLOG``): no keepalive pings (``heartbeat=None``), automatic
pongs, 4 MiB max message, its C HTTP parser and C WebSocket reader when built.
"""

from __future__ import annotations

import asyncio
import signal
import ssl

from aiohttp import WSMsgType, web

from bench.peers import BACKLOG, parse_args, raise_nofile_limit, server_ssl_context


async def echo(request: web.Request) -> web.WebSocketResponse:
    """Upgrade, then send every message back, as text or binary, as it came."""
    websocket = web.WebSocketResponse(compress=False)
    await websocket.prepare(request)
    async for message in websocket:
        if message.type is WSMsgType.TEXT:
            await websocket.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await websocket.send_bytes(message.data)
    return websocket


async def serve_until_stopped(host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
    """Listen, say ``ready``, and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    app = web.Application()
    app.router.add_get("/{path:.*}", echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner, host, port, backlog=BACKLOG, shutdown_timeout=1.0, ssl_context=ssl_context
    )
    await site.start()
    print("ready", flush=True)
    try:
        await stop
    finally:
        await runner.cleanup()


def main() -> None:
    """Run the server."""
    args = parse_args(
        "python -m bench.peers.aiohttp_echo", __doc__.split("\n")[0], tls_options=True
    )
    ssl_context = server_ssl_context(args)
    raise_nofile_limit()
    asyncio.run(serve_until_stopped(args.host, args.port, ssl_context))


if __name__ == "__main__":
    main()
