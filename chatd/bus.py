"""The bus: where a node's writes go and where the other nodes' events come from.

One chatd process is a node. Its hub owns the sessions connected to it; what other nodes
need to know crosses the bus:

* **Writes** (room messages and DMs) get their ``seq`` (or DM id) from the bus, which is
  the one authority for ordering. ``LocalBus`` is that authority for a single node: the
  SQLite ``Storage`` assigns the number at once. ``chatd.redis_bus.RedisBus`` asks Redis,
  so every node's messages share one sequence per room.
* **Committed records** reach every node in one order. With ``LocalBus`` they are what
  ``Storage.commit`` returns; with Redis, each node replays the shared log into its own
  SQLite file (a replica) and then delivers, so history reads stay local and quick.
* **Events** (presence, typing, receipts, a node's snapshot) are published for the
  other nodes; ``LocalBus`` has no other node and drops them.

``RemoteNodes`` is what a node knows of the others: who is online and in which room on
each, refreshed by their snapshots and forgotten when a node stops sending them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from chatd.storage import Storage, StoredDM, StoredMessage

__all__ = [
    "HEARTBEAT_INTERVAL",
    "NODE_TIMEOUT",
    "Bus",
    "BusUnavailable",
    "LocalBus",
    "NodeState",
    "RemoteNodes",
    "WriteDone",
    "redacted",
]

#: Seconds between a node's snapshots of its users and rooms on the bus.
HEARTBEAT_INTERVAL = 2.0
#: A node not heard from for this long is gone: its users go offline everywhere.
NODE_TIMEOUT = 10.0

#: Called on the loop thread with the stored number (seq or DM id), or the error.
WriteDone = Callable[[int | BaseException], None]


class BusUnavailable(Exception):
    """A write could not be taken: the shared store is away and the outbox is full."""


class Bus(Protocol):
    """What the hub needs of a bus (``LocalBus``, ``chatd.redis_bus.RedisBus``)."""

    #: This node's name on the bus.
    node: str
    #: Whether the bus itself stores a sender's client id once (a resend gets the first
    #: number back), so that the hub need not look it up in the database first.
    dedups: bool

    #: True when writes are taken and events flow (``/ready`` answers 503 otherwise).
    @property
    def up(self) -> bool: ...

    def write_message(  # noqa: PLR0917 - a row, as Storage.add_message takes it
        self,
        room: str,
        sender: str,
        text: str,
        kind: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        """Store a room message; ``done`` gets its ``seq``. A sender's ``client_id`` is
        stored once: a resend gets the first one's ``seq``.
        """

    def write_dm(  # noqa: PLR0917
        self,
        sender: str,
        recipient: str,
        text: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        """Store a direct message; ``done`` gets its id."""

    def publish(self, event: dict[str, Any]) -> None:
        """Tell the other nodes (best effort: an event lost is healed by a snapshot)."""

    def status(self) -> dict[str, Any]:
        """What ``/api/status`` and the metrics show of the bus."""

    def close(self) -> None:
        """Stop (on the loop thread, at shutdown)."""


class LocalBus:
    """One node, nothing to install: ``Storage`` numbers the writes, nothing to publish."""

    dedups = False

    def __init__(self, storage: Storage, node: str = "local") -> None:
        self.storage = storage
        self.node = node

    @property
    def up(self) -> bool:
        return True

    def write_message(  # noqa: PLR0917
        self,
        room: str,
        sender: str,
        text: str,
        kind: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        done(self.storage.add_message(room, sender, text, kind, client_id, ts).seq)

    def write_dm(  # noqa: PLR0917
        self,
        sender: str,
        recipient: str,
        text: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        done(self.storage.add_dm(sender, recipient, text, client_id, ts).id)

    def publish(self, event: dict[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"kind": "local", "node": self.node, "up": True}

    def close(self) -> None:
        pass


Record = StoredMessage | StoredDM


@dataclass
class NodeState:
    """Who is online on one other node, and in which rooms; when it was last heard."""

    users: set[str] = field(default_factory=set)
    #: room -> users of that node in it
    rooms: dict[str, set[str]] = field(default_factory=dict)
    seen: float = 0.0


class RemoteNodes:
    """The other nodes' users and rooms, kept from their events and snapshots.

    The hub changes ``nodes`` in place (``Hub._remote_change``), comparing what the
    whole cluster shows before and after (a user's first session anywhere, its last one
    gone) to tell its own clients.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeState] = {}

    def is_online(self, user: str) -> bool:
        return any(user in state.users for state in self.nodes.values())

    def in_room(self, user: str, room: str) -> bool:
        return any(user in state.rooms.get(room, ()) for state in self.nodes.values())

    def users(self) -> set[str]:
        result: set[str] = set()
        for state in self.nodes.values():
            result |= state.users
        return result

    def members(self, room: str) -> set[str]:
        result: set[str] = set()
        for state in self.nodes.values():
            result |= state.rooms.get(room, set())
        return result

    def forget(self, node: str) -> None:
        """``node`` said goodbye or fell silent (after its users were replaced by none)."""
        self.nodes.pop(node, None)

    def silent(self, now: float, timeout: float = NODE_TIMEOUT) -> list[str]:
        """The nodes not heard from for ``timeout`` seconds."""
        return [node for node, state in self.nodes.items() if now - state.seen > timeout]


def snapshot_state(users: Iterable[str], rooms: dict[str, Iterable[str]]) -> NodeState:
    """A ``NodeState`` from a snapshot event's lists."""
    return NodeState(set(users), {room: set(members) for room, members in rooms.items() if members})


def redacted(url: str) -> str:
    """``url`` without its password (in the user part or the query), for logs and
    ``/api/status``; everything else as it was written.
    """
    parts = urlsplit(url)
    shown = url
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        shown = shown.replace(userinfo + "@", userinfo.split(":", 1)[0] + ":***@", 1)
    if parts.query:
        query = "&".join(
            f"{name}=***" if name.lower() == "password" else name + eq + value
            for name, eq, value in (pair.partition("=") for pair in parts.query.split("&"))
        )
        shown = shown.replace("?" + parts.query, "?" + query, 1)
    return shown
