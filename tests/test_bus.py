"""Tests for chatd.bus and chatd.redis_bus: one chatd node among several.

The first half drives a ``Hub`` (an in-memory database, fake peers, a fake clock) as node
``n1`` of a cluster, with no Redis at all: what the other nodes say is fed to
``Hub.apply_bus`` exactly as their buses hand it over (event dicts, and records numbered
elsewhere), and what this node says is read from a ``LocalBus`` that keeps what the hub
publishes. A bus that numbers nothing itself (``SharedStoreBus``) stands for the shared
store, so that a write can be numbered before or after its record comes back.

The second half drives a ``RedisBus`` against a real ``redis-server`` on a free loopback
port, without any chatd process: the test thread plays the event loop (``Loop``), running
the callbacks the bus's threads hand to ``call_soon``, every wait bounded. Without
redis-server those tests skip, except under ``CI=true``, where they fail. Scenarios with
chatd processes are tests/test_cluster.py's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from test_chat import FakePeer

from bench.cluster import RedisServer
from chatd.bus import NODE_TIMEOUT, BusUnavailable, LocalBus, WriteDone, redacted
from chatd.hub import SESSION_GRACE, Hub, Session
from chatd.redis_bus import MAX_HANDED, RedisBus
from chatd.storage import Storage, StoredDM, StoredMessage
from rfc6455.server import Server

Message = dict[str, Any]
Item = StoredMessage | StoredDM | dict[str, Any]

#: Seconds any single wait may take before the test fails.
TIMEOUT = 5.0
#: This node's name on the bus.
NODE = "n1"
#: A message timestamp (ms), as the node that numbered it set it.
TS = 1_700_000_000_000


# --- one node, no Redis -------------------------------------------------------------------------


class RecordingBus(LocalBus):
    """One node's ``LocalBus`` (``Storage`` numbers the writes) that keeps what the hub
    publishes for the other nodes.
    """

    def __init__(self, storage: Storage, node: str = NODE) -> None:
        super().__init__(storage, node)
        self.published: list[Message] = []

    def publish(self, event: Message) -> None:
        self.published.append(event)

    def take(self) -> list[Message]:
        """What was published since the last ``take``."""
        taken, self.published = self.published, []
        return taken


@dataclass
class Write:
    """A write handed to ``SharedStoreBus``, waiting for the test to number it."""

    kind: str  # "message" or "dm"
    fields: tuple[Any, ...]
    done: WriteDone


class SharedStoreBus(RecordingBus):
    """Numbers nothing itself, as when Redis does: a write waits in ``writes`` until the
    test calls its ``done``, and its record comes back through ``Hub.apply_bus``.
    """

    def __init__(self, storage: Storage, node: str = NODE) -> None:
        super().__init__(storage, node)
        self.writes: list[Write] = []

    def write_message(  # noqa: PLR0917 - the Bus protocol's signature
        self,
        room: str,
        sender: str,
        text: str,
        kind: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        self.writes.append(Write("message", (room, sender, text, kind, client_id), done))

    def write_dm(  # noqa: PLR0917
        self,
        sender: str,
        recipient: str,
        text: str,
        client_id: str | None,
        ts: int,
        done: WriteDone,
    ) -> None:
        self.writes.append(Write("dm", (sender, recipient, text, client_id), done))


class ThisNode:
    """Node ``n1``: its hub, bus and clock, and a voice for the other nodes."""

    def __init__(self, bus_type: type[RecordingBus]) -> None:
        self.clock = [1000.0]
        self.storage = Storage(":memory:")
        self.bus = bus_type(self.storage)
        self.hub = Hub(
            self.storage,
            prepare=Server.prepare_many,
            clock=lambda: self.clock[0],
            bus=self.bus,
        )

    def connect(
        self, name: str, *, authenticated: bool = False, room: str | None = None
    ) -> tuple[Session, FakePeer]:
        peer = FakePeer()
        return self.hub.connect(peer, name, authenticated=authenticated, room=room), peer

    def send(self, session: Session, **message: Any) -> None:
        self.hub.receive(session, json.dumps(message))

    def remote(self, op: str, *, node: str = "n2", **fields: Any) -> None:
        """An event from another node, as its bus hands it over."""
        self.hub.apply_bus([{"op": op, "node": node, **fields}])

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds

    @property
    def writes(self) -> list[Write]:
        """The writes a ``SharedStoreBus`` holds."""
        assert isinstance(self.bus, SharedStoreBus)
        return self.bus.writes


@pytest.fixture
def node() -> Iterator[ThisNode]:
    this = ThisNode(RecordingBus)
    try:
        yield this
    finally:
        this.storage.close()


@pytest.fixture
def shared() -> Iterator[ThisNode]:
    this = ThisNode(SharedStoreBus)
    try:
        yield this
    finally:
        this.storage.close()


def clear(*peers: FakePeer) -> None:
    for peer in peers:
        peer.sent.clear()


def online(user: str) -> Message:
    return {"type": "presence", "event": "online", "user": user}


def offline(user: str) -> Message:
    return {"type": "presence", "event": "offline", "user": user}


def joins(user: str, room: str) -> Message:
    return {"type": "presence", "event": "join", "user": user, "room": room}


def leaves(user: str, room: str) -> list[Message]:
    """What a room is sent when ``user`` leaves it everywhere: typing stops, then it leaves."""
    return [
        {"type": "typing", "room": room, "user": user, "active": False},
        {"type": "presence", "event": "leave", "user": user, "room": room},
    ]


def message_wire(message: StoredMessage) -> Message:
    return {
        "type": "message",
        "room": message.room,
        "seq": message.seq,
        "ts": message.ts,
        "from": message.sender,
        "text": message.text,
        "kind": message.kind,
        "id": message.client_id,
    }


def dm_wire(dm: StoredDM) -> Message:
    return {
        "type": "dm",
        "dm": dm.id,
        "from": dm.sender,
        "to": dm.recipient,
        "text": dm.text,
        "ts": dm.ts,
        "id": dm.client_id,
    }


def test_a_single_node_on_the_default_bus_shows_presence_as_before() -> None:
    storage = Storage(":memory:")
    try:
        hub = Hub(storage, prepare=Server.prepare_many)
        assert isinstance(hub.bus, LocalBus)
        assert hub.bus.status() == {"kind": "local", "node": "local", "up": True}
        alice_peer, bob_peer = FakePeer(), FakePeer()
        hub.connect(alice_peer, "alice")
        assert alice_peer.take("welcome")[0]["online"] == ["alice"]
        clear(alice_peer)
        bob = hub.connect(bob_peer, "bob")
        assert bob_peer.take("welcome")[0]["online"] == ["alice", "bob"]
        assert bob_peer.take("joined")[0]["members"] == ["alice", "bob"]
        assert alice_peer.sent == [online("bob"), joins("bob", "lobby")]
        clear(alice_peer, bob_peer)
        hub.receive(bob, json.dumps({"type": "message", "room": "lobby", "text": "hi", "id": "b1"}))
        assert bob_peer.sent == []  # acknowledged at the commit
        assert hub.flush() == 1
        (ack,) = bob_peer.take("ack")
        assert (ack["id"], ack["seq"]) == ("b1", 1)
        assert [(m["from"], m["seq"]) for m in alice_peer.take("message")] == [("bob", 1)]
        clear(alice_peer)
        hub.disconnect(bob)
        assert alice_peer.sent == [*leaves("bob", "lobby"), offline("bob")]
        assert hub.remote.nodes == {}
        assert hub.status()["nodes"] == 1
    finally:
        storage.close()


def test_this_node_publishes_its_own_changes_with_its_name(node: ThisNode) -> None:
    alice, _ = node.connect("alice", authenticated=True)
    assert node.bus.take() == [
        {"op": "online", "user": "alice", "node": NODE},
        {"op": "join", "user": "alice", "room": "lobby", "node": NODE},
    ]
    tab, _ = node.connect("alice", authenticated=True)  # a second session: nothing new
    assert node.bus.take() == []
    node.send(alice, type="join", room="dev")
    node.send(alice, type="typing", room="dev", active=True)
    node.send(tab, type="join", room="dev")  # alice is in dev on this node already
    node.send(alice, type="leave", room="dev")  # her other session is still there
    node.send(tab, type="leave", room="dev")
    assert node.bus.take() == [
        {"op": "join", "user": "alice", "room": "dev", "node": NODE},
        {"op": "typing", "room": "dev", "user": "alice", "active": True, "node": NODE},
        {"op": "leave", "user": "alice", "room": "dev", "node": NODE},
    ]
    bob, _ = node.connect("bob")
    node.send(alice, type="message", room="lobby", text="hi", id="a1")
    assert node.hub.flush() == 1  # a write is numbered by the bus, not published
    node.send(bob, type="receipt", room="lobby", seq=1, status="seen")
    node.send(bob, type="message", room="lobby", text="/nick zed", id="n1")
    assert node.bus.take() == [
        {"op": "online", "user": "bob", "node": NODE},
        {"op": "join", "user": "bob", "room": "lobby", "node": NODE},
        {"op": "receipt", "room": "lobby", "seq": 1, "user": "bob", "status": "seen", "node": NODE},
        {"op": "rename", "user": "zed", "old": "bob", "node": NODE},
    ]
    node.hub.disconnect(tab)  # alice still has a session here
    assert node.bus.take() == []
    node.hub.disconnect(alice)
    node.hub.disconnect(bob)
    assert node.bus.take() == [
        {"op": "leave", "user": "alice", "room": "lobby", "node": NODE},
        {"op": "offline", "user": "alice", "node": NODE},
        {"op": "leave", "user": "zed", "room": "lobby", "node": NODE},
        {"op": "offline", "user": "zed", "node": NODE},
    ]


def test_a_remote_user_is_online_from_its_first_node_to_its_last(node: ThisNode) -> None:
    _, bob_peer = node.connect("bob")
    clear(bob_peer)
    node.remote("online", user="carol")
    assert bob_peer.sent == [online("carol")]
    node.remote("online", node="n3", user="carol")  # a second session, on a third node
    node.remote("offline", user="carol")  # n2 dropped her; n3 has her still
    assert bob_peer.sent == [online("carol")]
    assert node.hub.remote.is_online("carol")
    node.remote("offline", node="n3", user="carol")
    assert bob_peer.sent == [online("carol"), offline("carol")]
    assert node.hub.status()["nodes"] == 3


def test_a_user_online_here_is_not_announced_by_other_nodes(node: ThisNode) -> None:
    alice, _ = node.connect("alice", authenticated=True)
    _, bob_peer = node.connect("bob")
    clear(bob_peer)
    node.remote("online", user="alice")  # a tab of hers on n2
    node.remote("join", user="alice", room="lobby")
    node.remote("leave", user="alice", room="lobby")
    node.remote("offline", user="alice")
    assert bob_peer.sent == []
    node.remote("online", user="alice")
    node.bus.take()
    node.hub.disconnect(alice)  # gone from the lobby everywhere, online on n2
    assert bob_peer.sent == leaves("alice", "lobby")
    assert node.bus.take() == [
        {"op": "leave", "user": "alice", "room": "lobby", "node": NODE},
        {"op": "offline", "user": "alice", "node": NODE},
    ]
    node.remote("offline", user="alice")
    assert bob_peer.sent == [*leaves("alice", "lobby"), offline("alice")]


def test_rooms_across_nodes_in_presence_members_and_welcome(node: ThisNode) -> None:
    _, bob_peer = node.connect("bob", room="dev")
    clear(bob_peer)
    node.remote("online", user="carol")
    node.remote("join", user="carol", room="lobby")
    node.remote("join", user="carol", room="dev")
    assert bob_peer.sent == [online("carol"), joins("carol", "lobby"), joins("carol", "dev")]
    assert node.hub.members("dev") == ["bob", "carol"]
    _, dave_peer = node.connect("dave")
    assert dave_peer.take("welcome")[0]["online"] == ["bob", "carol", "dave"]
    (joined,) = dave_peer.take("joined")
    assert (joined["room"], joined["members"]) == ("lobby", ["bob", "carol", "dave"])
    clear(bob_peer)
    node.remote("online", node="n3", user="carol")
    node.remote("join", node="n3", user="carol", room="dev")
    node.remote("leave", user="carol", room="dev")  # in dev on n3 still
    assert bob_peer.sent == []
    node.remote("leave", node="n3", user="carol", room="dev")
    assert bob_peer.sent == leaves("carol", "dev")
    assert node.hub.members("dev") == ["bob"]
    node.remote("join", user="carol", room="dev")
    clear(bob_peer)
    # Her session here joins rooms she is in elsewhere: nobody is told twice.
    _, carol_peer = node.connect("carol", authenticated=True, room="dev")
    assert bob_peer.sent == []
    assert [(j["room"], j["members"]) for j in carol_peer.take("joined")] == [
        ("dev", ["bob", "carol"]),
        ("lobby", ["bob", "carol", "dave"]),
    ]


def test_a_snapshot_heals_missed_events(node: ThisNode) -> None:
    _, bob_peer = node.connect("bob")
    node.remote("online", user="alice")
    node.remote("join", user="alice", room="lobby")
    clear(bob_peer)
    # n2's events since were lost: alice went, carol came, into the lobby and dev.
    snapshot: Message = {"users": ["carol"], "rooms": {"lobby": ["carol"], "dev": ["carol"]}}
    node.remote("state", **snapshot)
    assert bob_peer.sent == [
        online("carol"),
        *leaves("alice", "lobby"),
        joins("carol", "lobby"),
        offline("alice"),
    ]
    state = node.hub.remote.nodes["n2"]
    assert (state.users, state.rooms) == ({"carol"}, {"lobby": {"carol"}, "dev": {"carol"}})
    assert node.hub.members("dev") == ["carol"]
    clear(bob_peer)
    node.remote("state", **snapshot)  # the same again: nothing to tell
    assert bob_peer.sent == []
    node.hub.flush()
    assert "dev" in [room.name for room in node.storage.rooms()]  # listed here too


def test_heartbeat_publishes_the_snapshot_and_drops_a_silent_node(node: ThisNode) -> None:
    _, alice_peer = node.connect("alice", room="dev")
    node.bus.take()
    node.hub.heartbeat()
    assert node.bus.take() == [
        {
            "op": "state",
            "users": ["alice"],
            "rooms": {"dev": ["alice"], "lobby": ["alice"]},
            "node": NODE,
        }
    ]
    node.remote("online", user="carol")
    node.remote("join", user="carol", room="lobby")
    node.remote("state", node="n3", users=["dave"], rooms={"lobby": ["dave"]})
    clear(alice_peer)
    node.advance(6.0)
    node.remote("state", node="n3", users=["dave"], rooms={"lobby": ["dave"]})  # n3 talks
    node.advance(NODE_TIMEOUT - 6.0)  # n2 silent for exactly NODE_TIMEOUT: not yet gone
    node.hub.heartbeat()
    assert alice_peer.sent == []
    assert set(node.hub.remote.nodes) == {"n2", "n3"}
    node.advance(0.5)
    node.hub.heartbeat()
    assert alice_peer.sent == [*leaves("carol", "lobby"), offline("carol")]
    assert set(node.hub.remote.nodes) == {"n3"}
    assert [
        (event["kind"], event["detail"])
        for event in node.hub.events.to_wire()
        if event["kind"] == "node_lost"
    ] == [("node_lost", "n2")]
    assert [event["op"] for event in node.bus.take()] == ["state", "state"]


def test_bye_drops_a_node_at_once(node: ThisNode) -> None:
    _, alice_peer = node.connect("alice")
    node.remote("online", user="carol")
    node.remote("join", user="carol", room="lobby")
    clear(alice_peer)
    node.remote("bye")
    assert alice_peer.sent == [*leaves("carol", "lobby"), offline("carol")]
    assert "n2" not in node.hub.remote.nodes
    assert "node_lost" not in [event["kind"] for event in node.hub.events.to_wire()]


def test_a_remote_guest_renamed(node: ThisNode) -> None:
    _, alice_peer = node.connect("alice", room="dev")
    node.remote("online", user="carol")
    node.remote("join", user="carol", room="dev")
    clear(alice_peer)
    node.remote("rename", user="cara", old="carol")
    assert alice_peer.sent == [
        {"type": "presence", "event": "rename", "user": "cara", "old": "carol"}
    ]
    assert node.hub.members("dev") == ["alice", "cara"]
    assert node.hub.remote.users() == {"cara"}
    _, cara_peer = node.connect("cara")
    assert cara_peer.take("welcome")[0]["user"] == "cara-2"
    _, carol_peer = node.connect("carol")  # the old name is free again
    assert carol_peer.take("welcome")[0]["user"] == "carol"


def test_remote_typing_reaches_the_room_except_the_typist(node: ThisNode) -> None:
    _, bob_peer = node.connect("bob", room="dev")
    _, carol_peer = node.connect("carol", authenticated=True, room="dev")  # her tab here
    _, dave_peer = node.connect("dave")  # not in dev
    node.remote("online", user="carol")
    node.remote("join", user="carol", room="dev")
    clear(bob_peer, carol_peer, dave_peer)
    node.remote("typing", user="carol", room="dev", active=True)
    assert bob_peer.sent == [{"type": "typing", "room": "dev", "user": "carol", "active": True}]
    assert carol_peer.sent == []
    assert dave_peer.sent == []


def test_a_remote_receipt_reaches_the_senders_sessions_here(node: ThisNode) -> None:
    alice, alice_peer = node.connect("alice", authenticated=True)
    _, tab_peer = node.connect("alice", authenticated=True)
    _, bob_peer = node.connect("bob")
    node.send(alice, type="message", room="lobby", text="hi", id="a1")
    node.hub.flush()
    clear(alice_peer, tab_peer, bob_peer)
    receipt: Message = {"room": "lobby", "seq": 1, "user": "carol", "status": "seen"}
    node.remote("receipt", **receipt)
    assert alice_peer.sent == [{"type": "receipt", **receipt}]
    assert tab_peer.sent == [{"type": "receipt", **receipt}]
    assert bob_peer.sent == []
    node.remote("receipt", **receipt)  # not news
    node.remote("receipt", **{**receipt, "seq": 7})  # beyond what this node has: ignored
    assert alice_peer.sent == [{"type": "receipt", **receipt}]
    node.hub.flush()
    assert node.storage.receipts("lobby")["carol"] == (1, 1)


def test_a_broken_event_is_skipped_and_the_records_after_it_are_applied(
    node: ThisNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Another version's event (a typing event without its room) in the middle of a batch.
    _, bob_peer = node.connect("bob")
    clear(bob_peer)
    record = StoredMessage("lobby", 1, TS, "carol", "after the bad one", "text", "c1")
    with caplog.at_level(logging.ERROR, logger="chatd.hub"):
        node.hub.apply_bus(
            [{"op": "typing", "node": "n2", "user": "carol", "active": True}, record]
        )
    assert "bus event skipped" in caplog.text
    assert node.hub.flush() == 1
    assert bob_peer.sent == [message_wire(record)]


def test_replicated_records_are_delivered_at_the_commit(
    node: ThisNode, caplog: pytest.LogCaptureFixture
) -> None:
    _, bob_peer = node.connect("bob")
    clear(bob_peer)
    first = StoredMessage("lobby", 1, TS, "carol", "one", "text", "c1")
    second = StoredMessage("lobby", 2, TS + 1, "carol", "waves", "me", None)
    node.hub.apply_bus([first, second])
    assert bob_peer.sent == []  # delivered by the tick's commit
    assert node.hub.flush() == 2
    assert bob_peer.sent == [message_wire(first), message_wire(second)]
    clear(bob_peer)
    third = StoredMessage("lobby", 3, TS + 2, "dave", "three", "text", "d3")
    node.hub.apply_bus([second, third])  # second again: already here, skipped
    assert node.hub.flush() == 1
    assert bob_peer.sent == [message_wire(third)]
    assert node.storage.last_seqs()["lobby"] == node.storage.visible_seq("lobby") == 3
    assert node.storage.message_at("lobby", 2) == second
    clear(bob_peer)
    dm = StoredDM(1, TS, "carol", "bob", "psst", "p1")
    node.hub.apply_bus([dm])
    assert node.hub.flush() == 1
    assert bob_peer.sent == [dm_wire(dm)]
    assert (node.storage.last_dm_id, node.storage.dm_at(1)) == (1, dm)
    clear(bob_peer)
    with caplog.at_level(logging.ERROR, logger="chatd.hub"):
        node.hub.apply_bus([StoredMessage("lobby", 5, TS, "carol", "gap", "text", None)])
    assert node.hub.flush() == 0
    assert bob_peer.sent == []
    assert "bus record not applied: lobby: seq 5 after 3" in caplog.text


def test_a_write_is_acknowledged_when_its_record_arrives(shared: ThisNode) -> None:
    alice, alice_peer = shared.connect("alice")
    _, bob_peer = shared.connect("bob")
    clear(alice_peer, bob_peer)
    shared.send(alice, type="message", room="lobby", text="hi", id="a1")
    shared.send(alice, type="message", room="lobby", text="hi", id="a1")  # resent meanwhile
    (write,) = shared.writes
    assert (write.kind, write.fields) == ("message", ("lobby", "alice", "hi", "text", "a1"))
    write.done(1)
    assert alice_peer.sent == []  # numbered, not here yet
    record = StoredMessage("lobby", 1, TS, "alice", "hi", "text", "a1")
    shared.hub.apply_bus([record])
    assert shared.hub.flush() == 1
    ack = {"type": "ack", "id": "a1", "room": "lobby", "seq": 1, "ts": TS}
    assert alice_peer.take("ack") == [ack, ack]
    assert bob_peer.sent == [message_wire(record)]
    clear(alice_peer)
    shared.send(alice, type="message", room="lobby", text="hi", id="a1")  # stored: acked now
    assert alice_peer.sent == [ack]
    assert len(shared.writes) == 1
    # The record may come back, and be committed, before the number does.
    clear(alice_peer)
    shared.send(alice, type="message", room="lobby", text="two", id="a2")
    second = StoredMessage("lobby", 2, TS + 1, "alice", "two", "text", "a2")
    shared.hub.apply_bus([second])
    shared.hub.flush()
    assert alice_peer.take("ack") == []
    shared.writes[-1].done(2)
    assert alice_peer.take("ack") == [
        {"type": "ack", "id": "a2", "room": "lobby", "seq": 2, "ts": TS + 1}
    ]
    # A DM the same way.
    clear(alice_peer, bob_peer)
    shared.send(alice, type="dm", to="bob", text="psst", id="d1")
    write = shared.writes[-1]
    assert (write.kind, write.fields) == ("dm", ("alice", "bob", "psst", "d1"))
    write.done(1)
    dm = StoredDM(1, TS, "alice", "bob", "psst", "d1")
    shared.hub.apply_bus([dm])
    shared.hub.flush()
    assert alice_peer.sent == [dm_wire(dm), {"type": "ack", "id": "d1", "dm": 1, "ts": TS}]
    assert bob_peer.sent == [dm_wire(dm)]


def test_a_write_the_bus_refuses_is_answered_unavailable(shared: ThisNode) -> None:
    alice, alice_peer = shared.connect("alice")
    clear(alice_peer)
    shared.send(alice, type="message", room="lobby", text="hi", id="a1")
    shared.send(alice, type="message", room="lobby", text="hi", id="a1")
    shared.writes[-1].done(BusUnavailable("2 writes already wait for Redis"))
    assert [(e["code"], e["id"]) for e in alice_peer.take("error")] == [("unavailable", "a1")] * 2
    shared.send(alice, type="message", room="lobby", text="hi", id="a1")  # sent again: a write
    assert len(shared.writes) == 2


def test_a_guest_does_not_get_a_name_online_on_another_node(node: ThisNode) -> None:
    node.remote("online", user="carol")
    _, carol_peer = node.connect("carol")
    assert carol_peer.take("welcome")[0]["user"] == "carol-2"
    bob, bob_peer = node.connect("bob")
    node.send(bob, type="message", room="lobby", text="/nick carol", id="n1")
    assert [(e["code"], e["id"]) for e in bob_peer.take("error")] == [("name_taken", "n1")]
    node.remote("offline", user="carol")
    _, again_peer = node.connect("carol")
    assert again_peer.take("welcome")[0]["user"] == "carol"


def test_a_resumed_guest_does_not_keep_a_name_taken_on_another_node(node: ThisNode) -> None:
    alice, _ = node.connect("alice")
    node.hub.disconnect(alice)
    node.remote("online", user="alice")  # a new guest on n2 got the free name meanwhile
    resumed = node.hub.connect(FakePeer(), "alice", session_id=alice.id)
    assert resumed is alice
    assert resumed.user == "alice-2"  # as when the name is taken on this node


def test_a_dm_may_reach_a_user_who_left_another_node_within_the_grace(node: ThisNode) -> None:
    alice, alice_peer = node.connect("alice")
    node.remote("online", user="carol")
    node.remote("offline", user="carol")
    node.advance(SESSION_GRACE)
    node.send(alice, type="dm", to="carol", text="still there?", id="d1")
    node.hub.flush()
    assert [(a["id"], a["dm"]) for a in alice_peer.take("ack")] == [("d1", 1)]
    node.advance(1.0)
    node.send(alice, type="dm", to="carol", text="hello?", id="d2")
    node.send(alice, type="dm", to="nobody", text="hello?", id="d3")
    assert [(e["code"], e["id"]) for e in alice_peer.take("error")] == [
        ("no_such_user", "d2"),
        ("no_such_user", "d3"),
    ]
    # A node that falls silent: its users may get DMs for the grace too.
    node.remote("online", node="n3", user="dave")
    node.advance(NODE_TIMEOUT + 1)
    node.hub.heartbeat()
    node.send(alice, type="dm", to="dave", text="you there?", id="d4")
    node.hub.flush()
    assert [a["id"] for a in alice_peer.take("ack")] == ["d1", "d4"]


# --- RedisBus against a real redis-server ---------------------------------------------------------


class Loop:
    """The event loop as a ``RedisBus`` sees it: its threads hand callbacks to
    ``call_soon`` (thread-safe, as ``Server.call_soon_threadsafe``), the test thread runs
    them in ``run_until``, and ``deliver`` (the hub's ``apply_bus``) keeps what arrived.
    """

    def __init__(self) -> None:
        self._callbacks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.items: list[Item] = []
        #: What ``done`` was given, in order: seqs, DM ids or errors.
        self.results: list[int | BaseException] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._callbacks.put(callback)

    def deliver(self, items: Sequence[Item]) -> None:
        self.items.extend(items)

    def done(self, result: int | BaseException) -> None:
        self.results.append(result)

    def run_until(self, condition: Callable[[], bool], what: str) -> None:
        """Run callbacks until ``condition()``; fail after ``TIMEOUT`` seconds."""
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"waited {TIMEOUT} s for {what}")
            try:
                callback = self._callbacks.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                continue
            callback()


class Buses:
    """``RedisBus`` instances on one Redis, each with its loop; all closed at the end."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.started: list[RedisBus] = []

    def start(
        self,
        node: str = NODE,
        *,
        last_seqs: dict[str, int] | None = None,
        last_dm_id: int = 0,
        max_outbox: int = 10_000,
    ) -> tuple[RedisBus, Loop]:
        """A bus started, once connected (its catch-up delivered)."""
        bus = RedisBus(
            self.server.url,
            node,
            last_seqs=dict(last_seqs or {}),
            last_dm_id=last_dm_id,
            max_outbox=max_outbox,
        )
        loop = Loop()
        bus.start(loop.call_soon, loop.deliver)
        self.started.append(bus)
        loop.run_until(lambda: bus.up, f"{node} to connect")
        return bus, loop

    def close(self) -> None:
        for bus in self.started:
            bus.close(timeout=0.0)  # every bus told to stop, so that they stop together
        # An entry wakes the readers from their blocking XREAD (READ_BLOCK_MS) at once.
        client = redis_client(self.server)
        with contextlib.suppress(redis.RedisError):
            client.xadd("chatd:bus", {"r": "e", "n": "teardown", "e": "{}"})
        client.close()
        for bus in self.started:
            bus.close()
        alive = [t.name for t in threading.enumerate() if t.name.startswith("chatd-bus-")]
        assert alive == [], f"bus threads still running: {alive}"


@pytest.fixture
def buses(redis_server: RedisServer) -> Iterator[Buses]:
    started = Buses(redis_server)
    try:
        yield started
    finally:
        started.close()


def redis_client(server: RedisServer) -> Any:
    """A client of our own, to look at (and damage) what the buses keep in Redis."""
    return redis.Redis.from_url(server.url, socket_timeout=TIMEOUT)


def messages(loop: Loop) -> list[StoredMessage]:
    return [item for item in loop.items if isinstance(item, StoredMessage)]


def test_writes_are_numbered_and_delivered_in_order(buses: Buses) -> None:
    bus, loop = buses.start()
    for n in (1, 2, 3):
        bus.write_message("dev", "alice", f"m{n}", "text", f"c{n}", TS + n, loop.done)
    bus.write_message("dev", "bob", "waves", "me", None, TS + 4, loop.done)
    loop.run_until(lambda: len(loop.results) == 4 and len(loop.items) == 4, "4 writes")
    assert loop.results == [1, 2, 3, 4]
    assert loop.items == [
        StoredMessage("dev", 1, TS + 1, "alice", "m1", "text", "c1"),
        StoredMessage("dev", 2, TS + 2, "alice", "m2", "text", "c2"),
        StoredMessage("dev", 3, TS + 3, "alice", "m3", "text", "c3"),
        StoredMessage("dev", 4, TS + 4, "bob", "waves", "me", None),
    ]
    status = bus.status()
    assert (status["outbox"], status["received"], status["refused"]) == (0, 4, 0)


def test_a_resent_client_id_gets_the_first_seq_and_no_second_record(
    buses: Buses, redis_server: RedisServer
) -> None:
    bus, loop = buses.start()
    bus.write_message("dev", "alice", "first", "text", "same", TS, loop.done)
    bus.write_message("dev", "alice", "first", "text", "same", TS + 1, loop.done)
    bus.write_message("dev", "bob", "his own", "text", "same", TS + 2, loop.done)  # not a resend
    bus.write_message("dev", "alice", "next", "text", "other", TS + 3, loop.done)
    loop.run_until(lambda: len(loop.results) == 4 and len(loop.items) == 3, "the writes")
    assert loop.results == [1, 1, 2, 3]
    assert loop.items == [
        StoredMessage("dev", 1, TS, "alice", "first", "text", "same"),
        StoredMessage("dev", 2, TS + 2, "bob", "his own", "text", "same"),
        StoredMessage("dev", 3, TS + 3, "alice", "next", "text", "other"),
    ]
    client = redis_client(redis_server)
    try:
        assert client.xlen("chatd:log:dev") == 3
    finally:
        client.close()


def test_dms_are_numbered_apart_from_rooms(buses: Buses) -> None:
    bus, loop = buses.start()
    bus.write_dm("alice", "bob", "hi", "d1", TS, loop.done)
    bus.write_dm("bob", "alice", "hello", None, TS + 1, loop.done)
    bus.write_dm("alice", "bob", "hi", "d1", TS + 2, loop.done)  # a resend
    bus.write_message("dev", "alice", "in a room", "text", "m1", TS + 3, loop.done)
    loop.run_until(lambda: len(loop.results) == 4 and len(loop.items) == 3, "the writes")
    assert loop.results == [1, 2, 1, 1]
    assert loop.items == [
        StoredDM(1, TS, "alice", "bob", "hi", "d1"),
        StoredDM(2, TS + 1, "bob", "alice", "hello", None),
        StoredMessage("dev", 1, TS + 3, "alice", "in a room", "text", "m1"),
    ]


def test_two_nodes_see_each_others_events_but_not_their_own(buses: Buses) -> None:
    one, one_loop = buses.start("n1")
    two, two_loop = buses.start("n2")
    typing = {"op": "typing", "room": "dev", "user": "alice", "active": True, "node": "n1"}
    one.publish(typing)
    two_loop.run_until(lambda: bool(two_loop.items), "n1's event at n2")
    assert two_loop.items == [typing]
    hello = {"op": "online", "user": "bob", "node": "n2"}
    two.publish(hello)  # after n1's event in the stream: n1 reads its own first
    one_loop.run_until(lambda: bool(one_loop.items), "n2's event at n1")
    assert one_loop.items == [hello]
    one.write_message("dev", "alice", "hi", "text", "c1", TS, one_loop.done)
    record = StoredMessage("dev", 1, TS, "alice", "hi", "text", "c1")  # to every node
    one_loop.run_until(lambda: len(one_loop.items) == 2, "the record at n1")
    two_loop.run_until(lambda: len(two_loop.items) == 2, "the record at n2")
    assert one_loop.items == [hello, record]
    assert two_loop.items == [typing, record]


def test_a_node_catches_up_from_the_room_logs(buses: Buses) -> None:
    writer, loop = buses.start("n1")
    for n in (1, 2, 3):
        writer.write_message("dev", "alice", f"m{n}", "text", None, TS + n, loop.done)
    writer.write_message("ops", "bob", "o1", "text", None, TS, loop.done)
    writer.write_dm("alice", "bob", "psst", None, TS, loop.done)
    loop.run_until(lambda: len(loop.results) == 5, "the writes")
    dev = [StoredMessage("dev", n, TS + n, "alice", f"m{n}", "text", None) for n in (1, 2, 3)]
    ops = StoredMessage("ops", 1, TS, "bob", "o1", "text", None)
    dm = StoredDM(1, TS, "alice", "bob", "psst", None)
    _, late = buses.start("n2", last_seqs={"dev": 0})
    assert late.items == [*dev, ops, dm]  # room by room, then the DMs
    _, partial = buses.start("n3", last_seqs={"dev": 2, "ops": 1}, last_dm_id=1)
    assert partial.items == [dev[2]]


def test_a_gap_in_the_bus_stream_is_filled_from_the_room_log(
    buses: Buses, redis_server: RedisServer
) -> None:
    bus, loop = buses.start()
    bus.write_message("dev", "alice", "m1", "text", None, TS, loop.done)
    loop.run_until(lambda: len(loop.items) == 1, "seq 1")
    # Hold the reader after its next read: it waits while the loop has not taken its last
    # MAX_HANDED batches. No public hook does this; the semaphore is the bus's own.
    for _ in range(MAX_HANDED):
        assert bus._handed.acquire(timeout=TIMEOUT)
    client = redis_client(redis_server)
    try:
        bus.write_message("dev", "alice", "m2", "text", None, TS, loop.done)
        loop.run_until(lambda: bus._known.get("dev") == 2, "the reader to read seq 2")
        bus.write_message("dev", "alice", "m3", "text", None, TS, loop.done)
        bus.write_message("dev", "alice", "m4", "text", None, TS, loop.done)
        loop.run_until(lambda: len(loop.results) == 4, "seqs 3 and 4")
        holes = [
            entry_id
            for entry_id, fields in client.xrange("chatd:bus")
            if fields[b"seq"] in {b"3", b"4"}
        ]
        assert client.xdel("chatd:bus", *holes) == 2
        bus.write_message("dev", "alice", "m5", "text", None, TS, loop.done)
        loop.run_until(lambda: len(loop.results) == 5, "seq 5")
        in_stream = [int(fields[b"seq"]) for _, fields in client.xrange("chatd:bus")]
        assert in_stream == [1, 2, 5]
    finally:
        client.close()
        for _ in range(MAX_HANDED):
            bus._handed.release()
    loop.run_until(lambda: len(loop.items) == 5, "seqs 2 to 5")
    assert loop.results == [1, 2, 3, 4, 5]
    assert loop.items == [
        StoredMessage("dev", n, TS, "alice", f"m{n}", "text", None) for n in range(1, 6)
    ]


def test_the_outbox_limit_and_status_while_redis_is_down(
    buses: Buses, redis_server: RedisServer
) -> None:
    bus, loop = buses.start(max_outbox=2)
    bus.write_message("dev", "alice", "before", "text", "c0", TS, loop.done)
    loop.run_until(lambda: loop.results == [1], "a first write")
    status = bus.status()
    assert (status["up"], status["down_for"], status["last_error"]) == (True, None, None)
    redis_server.stop()
    bus.write_message("dev", "alice", "a", "text", "c1", TS, loop.done)
    bus.write_message("dev", "alice", "b", "text", "c2", TS, loop.done)
    bus.write_message("dev", "alice", "c", "text", "c3", TS, loop.done)
    assert len(loop.results) == 2  # the third is refused at once
    assert isinstance(loop.results[1], BusUnavailable)
    # The writer's side of ``up`` (the reader may notice first): events are dropped then.
    loop.run_until(lambda: not bus._writer_up, "the writer to see Redis go")
    bus.publish({"op": "typing", "room": "dev", "user": "alice", "active": True, "node": NODE})
    status = bus.status()
    assert (status["up"], status["outbox"], status["refused"]) == (False, 2, 1)
    assert isinstance(status["down_for"], float)
    assert status["down_for"] >= 0
    assert re.match(r"\w+: .", status["last_error"])  # "ConnectionError: Error 111 ..."
    assert status["events_dropped"] == 1
    redis_server.start()
    loop.run_until(
        lambda: len(loop.results) == 4 and len(loop.items) == 3 and bus.up, "the outbox sent"
    )
    assert loop.results[2:] == [2, 3]
    assert [(m.seq, m.text) for m in messages(loop)] == [(1, "before"), (2, "a"), (3, "b")]
    status = bus.status()
    assert (status["up"], status["down_for"], status["outbox"]) == (True, None, 0)
    assert status["reconnects"] >= 2
    assert status["refused"] == 1


def test_redacted_hides_the_password() -> None:
    assert redacted("redis://user:secret@127.0.0.1:6379/0") == "redis://user:***@127.0.0.1:6379/0"
    assert redacted("redis://:secret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redacted("redis://user@127.0.0.1/1") == "redis://user@127.0.0.1/1"


def test_the_status_of_a_bus_not_connected_yet() -> None:
    # No thread is started and nothing is connected: the client is only built.
    bus = RedisBus("redis://user:secret@127.0.0.1:6379/0", NODE, last_seqs={}, last_dm_id=0)
    status = bus.status()
    assert isinstance(status.pop("down_for"), float)
    assert status == {
        "kind": "redis",
        "node": NODE,
        "url": "redis://user:***@127.0.0.1:6379/0",
        "up": False,
        "outbox": 0,
        "reconnects": 0,
        "refused": 0,
        "received": 0,
        "events_dropped": 0,
        "last_error": None,
    }


def test_redacted_keeps_an_ipv6_address_as_it_was() -> None:
    assert redacted("redis://:secret@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


def test_redacted_hides_a_password_given_in_the_query() -> None:
    assert "secret" not in redacted("redis://127.0.0.1:6379/0?password=secret")


def test_redis_restarted_without_its_data_does_not_reuse_a_seq(
    buses: Buses, redis_server: RedisServer, tmp_path: Path
) -> None:
    bus, loop = buses.start()
    for n in (1, 2, 3):
        bus.write_message("dev", "alice", f"m{n}", "text", None, TS, loop.done)
    bus.write_dm("alice", "bob", "psst", None, TS, loop.done)
    loop.run_until(lambda: len(loop.results) == len(loop.items) == 4, "the writes")
    redis_server.stop()
    empty = RedisServer(tmp_path / "empty", port=redis_server.port)  # appendonly file lost
    client = redis_client(empty)
    try:
        loop.run_until(lambda: bus.reconnects >= 2 and bus.up, "the bus to reconnect")
        assert (client.get("chatd:seq:dev"), client.get("chatd:dmseq")) == (b"3", b"1")
        bus.write_message("dev", "alice", "after", "text", None, TS, loop.done)
        bus.write_dm("alice", "bob", "after", None, TS, loop.done)
        loop.run_until(
            lambda: len(loop.results) == len(loop.items) == 6, "the writes after the restart"
        )
    finally:
        client.close()
        empty.stop()
    assert loop.results == [1, 2, 3, 1, 4, 2]
    assert loop.items[4:] == [
        StoredMessage("dev", 4, TS, "alice", "after", "text", None),
        StoredDM(2, TS, "alice", "bob", "after", None),
    ]


def hold_reader_after_seq(bus: RedisBus, loop: Loop, seq: int) -> None:
    """Write ``seq`` of room dev and keep the reader from reading again, as when the loop
    has not taken its last ``MAX_HANDED`` batches (``release_reader`` lets it go).
    """
    for _ in range(MAX_HANDED):
        assert bus._handed.acquire(timeout=TIMEOUT)
    bus.write_message("dev", "alice", f"m{seq}", "text", None, TS, loop.done)
    loop.run_until(lambda: bus._known.get("dev") == seq, f"the reader to read seq {seq}")


def release_reader(bus: RedisBus) -> None:
    for _ in range(MAX_HANDED):
        bus._handed.release()


def test_a_write_before_the_readers_catch_up_does_not_reuse_a_seq(
    buses: Buses, redis_server: RedisServer, tmp_path: Path
) -> None:
    bus, loop = buses.start()
    for n in (1, 2, 3):
        bus.write_message("dev", "alice", f"m{n}", "text", None, TS, loop.done)
    loop.run_until(lambda: len(loop.items) == 3, "the writes")
    hold_reader_after_seq(bus, loop, 4)
    try:
        redis_server.stop()
        empty = RedisServer(tmp_path / "empty", port=redis_server.port)
        try:
            bus.write_message("dev", "alice", "after", "text", "new", TS, loop.done)
            loop.run_until(lambda: len(loop.results) == 5, "the write after the restart")
        finally:
            empty.stop()
    finally:
        release_reader(bus)
    assert loop.results[4] == 5  # not 1: a seq every replica has would never be delivered


def test_a_reader_between_reads_notices_that_redis_lost_its_data(
    buses: Buses, redis_server: RedisServer, tmp_path: Path
) -> None:
    bus, loop = buses.start()
    for n in (1, 2, 3):
        bus.write_message("dev", "alice", f"m{n}", "text", None, TS, loop.done)
    loop.run_until(lambda: len(loop.items) == 3, "the writes")
    hold_reader_after_seq(bus, loop, 4)
    redis_server.stop()
    empty = RedisServer(tmp_path / "empty", port=redis_server.port)
    client = redis_client(empty)
    try:
        release_reader(bus)
        # An event from elsewhere: once the reader delivers it, it has read the new Redis.
        probe = {"op": "probe", "node": "n9"}
        client.xadd("chatd:bus", {"r": "e", "n": "n9", "e": json.dumps(probe)})
        loop.run_until(lambda: probe in loop.items, "the reader to read the new Redis")
        seq = client.get("chatd:seq:dev")
    finally:
        client.close()
        empty.stop()
    assert seq == b"4"  # raised to what the replica has (the run_id changed)
