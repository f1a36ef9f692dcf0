"""chatd: a chat daemon built on the rfc6455 WebSocket implementation."""

__version__ = "0.1.0"
