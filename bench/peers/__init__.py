"""Servers built on other Python WebSocket libraries, measured beside ours.

Each is a module run as ``python -m bench.peers.NAME --port P``: it listens on
127.0.0.1, prints ``ready`` once it listens and exits on SIGTERM or SIGINT. The echo
peers (``websockets_echo``, ``aiohttp_echo``) send every message back unchanged; the
broadcast peer (``websockets_broadcast``) relays chat messages in chatd's wire format to
every client. ``bench/load.py compare`` starts them.
"""

from __future__ import annotations

import argparse
import resource

__all__ = ["BACKLOG", "parse_args", "raise_nofile_limit"]

#: Listen backlog for every server in the comparison, the same as ``rfc6455.server``'s
#: default, so that a burst of connections is not refused by one and queued by another.
BACKLOG = 1024


def parse_args(prog: str, description: str) -> argparse.Namespace:
    """The command line every peer takes: ``--host`` (127.0.0.1) and ``--port``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser.parse_args()


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
