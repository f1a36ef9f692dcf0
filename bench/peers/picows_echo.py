"""An echo server on ``picows``, a Cython WebSocket library that works frame by frame.

``python -m bench.peers.picows_echo --port P [--certfile C --keyfile K]``, the two files
for ``wss://``. Settings are the library's defaults except the listen backlog
(``BACKLOG``): no compression (picows has none), automatic pongs, no keepalive pings, a
5 s opening handshake timeout, ``max_frame_size`` 10 MiB (a larger frame is closed with
1009), the plain asyncio event loop and ``aiofastnet``'s transports when that package is
installed (picows' default). picows does not check that text is UTF-8: a text payload
is echoed as the bytes that came, where the other servers decode and validate it.

picows hands the application frames, not messages, so ``MessageListener`` reassembles
fragmented messages (section 5.4) before they are echoed, up to ``MAX_MESSAGE_SIZE``,
and stops reading from a client that does not read its echoes, as the other echo
servers do while a send waits. ``bench.peers.picows_broadcast`` reuses it. An
unfragmented message, the common case, is echoed from a view of picows' read buffer
without a copy in Python.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import ssl

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from bench.peers import BACKLOG, parse_args, raise_nofile_limit, server_ssl_context

__all__ = [
    "MAX_MESSAGE_SIZE",
    "EchoListener",
    "MessageListener",
    "accept_every_path",
    "serve_until_stopped",
]

#: The most a reassembled message may hold: picows' default ``max_frame_size``, so a
#: message in many frames is bounded as one frame is (larger closes with 1009).
MAX_MESSAGE_SIZE = 10 * 1024 * 1024

#: ``WSTransport.send`` copies a payload up to this size into picows' own write buffer;
#: a larger one is handed to the transport as it is.
PICOWS_COPY_LIMIT = 8192

#: aiofastnet copies what it cannot send at once, so a view of picows' read buffer may
#: be sent as it is; asyncio's own transports would keep the view past the callback.
VIEWS_ARE_COPIED = importlib.util.find_spec("aiofastnet") is not None

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY


class MessageListener(WSListener):
    """A picows listener that sees whole messages: it joins the frames of a fragmented
    message, answers a close and leaves pings to picows' automatic pongs.

    Subclasses implement ``on_message``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self._fragment_type: WSMsgType | None = None  # of the message being reassembled
        self._fragments = bytearray()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        """Stop reading while the peer does not read what we send.

        picows leaves flow control to the application (by default it only logs a warning
        at each crossing of the write buffer's high-water mark). The other echo servers
        stop reading while a send waits for the buffer to drain; this does the same.
        """
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        """The write buffer is below its low-water mark again: read again."""
        if self.transport is not None:
            self.transport.underlying_transport.resume_reading()

    def on_message(
        self, transport: WSTransport, msg_type: WSMsgType, payload: memoryview | bytearray
    ) -> None:
        """A whole TEXT or BINARY message arrived. A memoryview is valid only during the
        call (it points into picows' read buffer).
        """
        raise NotImplementedError

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Hand over a message; the hot path (an unfragmented message) comes first."""
        msg_type = frame.msg_type
        if frame.fin and self._fragment_type is None and (msg_type is TEXT or msg_type is BINARY):
            self.on_message(transport, msg_type, frame.get_payload_as_memoryview())
        else:
            self._on_other_frame(transport, frame, msg_type)

    def _on_other_frame(self, transport: WSTransport, frame: WSFrame, msg_type: WSMsgType) -> None:
        if msg_type is WSMsgType.CLOSE:
            # Section 5.5.1: answer with a close, echoing the code; picows cannot send a
            # close without a code, so an empty close is answered with 1000.
            code = frame.get_close_code()
            transport.send_close(WSCloseCode.OK if code == WSCloseCode.NO_INFO else code)
            transport.disconnect()
        elif msg_type is WSMsgType.CONTINUATION:
            message_type = self._fragment_type
            if message_type is None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "continuation of no message")
            self._add_fragment(frame)
            if frame.fin:
                message = self._fragments
                self._fragment_type, self._fragments = None, bytearray()
                self.on_message(transport, message_type, message)
        elif msg_type is TEXT or msg_type is BINARY:
            # Section 5.4: the fragments of one message are not interleaved with another.
            if self._fragment_type is not None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "new message inside another")
            self._fragment_type = msg_type
            self._add_fragment(frame)
        # A PONG needs nothing; a PING never gets here (picows answers it by itself).

    def _add_fragment(self, frame: WSFrame) -> None:
        if len(self._fragments) + frame.payload_size > MAX_MESSAGE_SIZE:
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
        self._fragments += frame.get_payload_as_memoryview()


class EchoListener(MessageListener):
    """Send every message back with its opcode, as it came."""

    def on_message(
        self, transport: WSTransport, msg_type: WSMsgType, payload: memoryview | bytearray
    ) -> None:
        if not VIEWS_ARE_COPIED and len(payload) > PICOWS_COPY_LIMIT:
            payload = bytearray(payload)  # asyncio would send from the view after we return
        transport.send(msg_type, payload)


def accept_every_path(request: WSUpgradeRequest) -> WSListener:
    """picows' listener factory: every path echoes, as in the other echo servers."""
    return EchoListener()


async def serve_until_stopped(host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
    """Listen, say ``ready``, and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    server = await ws_create_server(accept_every_path, host, port, backlog=BACKLOG, ssl=ssl_context)
    print("ready", flush=True)
    try:
        await stop
    finally:
        # Connections are dropped with the process: picows keeps no list of them.
        server.close()


def main() -> None:
    """Run the server."""
    args = parse_args("python -m bench.peers.picows_echo", __doc__.split("\n")[0], tls_options=True)
    ssl_context = server_ssl_context(args)
    raise_nofile_limit()
    asyncio.run(serve_until_stopped(args.host, args.port, ssl_context))


if __name__ == "__main__":
    main()
