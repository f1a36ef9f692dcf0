"""Several chatd nodes sharing rooms, presence and history through a real Redis.

Each test starts its own ``redis-server`` (Debian's package, installed by ``.ci/run``) on a
free loopback port with ``appendfsync always``, and chatd processes with
``--bus redis://...``; clients are spread across the nodes. Without redis-server these
tests skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_chat import TIMEOUT, Chatter, RfcChatter

from bench.cluster import Node, RedisServer
from rfc6455.client import ConnectionClosed

Message = dict[str, Any]

#: chatd.bus.NODE_TIMEOUT plus a heartbeat and some slack.
NODE_GONE_WITHIN = 10.0 + 2.0 + 5.0


class Cluster:
    """Nodes on one Redis; every node stopped at the end by its PID."""

    def __init__(self, redis: RedisServer, directory: Path) -> None:
        self.redis = redis
        self.directory = directory
        self.nodes: list[Node] = []
        self.clients: list[Chatter] = []

    def node(self, name: str, *extra: str) -> Node:
        # No rate limit: the tests publish as fast as they can.
        node = Node(name, self.redis.url, self.directory / name, "--rate-limit", "0", *extra)
        self.nodes.append(node)
        node.wait_ready()
        return node

    def client(self, node: Node, query: str) -> RfcChatter:
        chatter = RfcChatter(node.url(query))
        self.clients.append(chatter)
        return chatter

    def close(self) -> None:
        for chatter in self.clients:
            with contextlib.suppress(OSError, ConnectionClosed):
                chatter.close()
        for node in self.nodes:
            node.stop()


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(redis_server, tmp_path)
    try:
        yield running
    finally:
        running.close()


def until(condition: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll ``condition`` every 50 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met in {timeout}s")


def room_messages(chatter: Chatter, room: str, count: int) -> list[Message]:
    """The next ``count`` ``message`` frames of ``room`` this client receives, in order."""
    received = [m for m in chatter.inbox if m.get("type") == "message" and m["room"] == room]
    chatter.inbox = [m for m in chatter.inbox if m not in received]
    while len(received) < count:
        received.append(chatter.expect("message", room=room))
    return received


def history(node: Node, room: str) -> list[Message]:
    """Every message of ``room`` as ``node`` serves it over HTTP (oldest first)."""
    messages: list[Message] = []
    before: int | None = None
    for _ in range(100):
        query = f"/api/rooms/{room}/messages?limit=200" + (f"&before={before}" if before else "")
        status, page = node.get(query)
        assert status == 200, page
        messages[:0] = page["messages"]
        if not page["has_more"]:
            return messages
        before = page["messages"][0]["seq"]
    raise AssertionError("history longer than 100 pages")


def room_members(node: Node, room: str) -> int:
    """How many users ``node`` says are in ``room`` (on any node)."""
    rooms = {each["name"]: each for each in node.get("/api/rooms")[1]["rooms"]}
    return int(rooms[room]["members"]) if room in rooms else 0


def assert_gapless(messages: list[Message]) -> None:
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


# --- ordering, history, DMs -------------------------------------------------------------------


def test_room_messages_reach_every_node_in_one_order(cluster: Cluster) -> None:
    nodes = [cluster.node(name) for name in ("a", "b", "c")]
    chatters = [
        cluster.client(nodes[index % 3], f"name=user{index}&room=dev") for index in range(6)
    ]
    per_sender = 40
    acks: dict[str, Message] = {}
    lock = threading.Lock()

    def publish(chatter: Chatter) -> None:
        for number in range(per_sender):
            chatter.send(
                type="message", room="dev", text=f"{chatter.user} {number}", id=f"m{number}"
            )
        for number in range(per_sender):
            ack = chatter.expect("ack", id=f"m{number}")
            with lock:
                acks[f"{chatter.user} {number}"] = ack

    threads = [threading.Thread(target=publish, args=(c,)) for c in chatters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert len(acks) == per_sender * len(chatters)

    total = per_sender * len(chatters)
    seen = [room_messages(chatter, "dev", total) for chatter in chatters]
    first = [(m["seq"], m["from"], m["text"]) for m in seen[0]]
    for other in seen[1:]:
        assert [(m["seq"], m["from"], m["text"]) for m in other] == first
    assert [seq for seq, _, _ in first] == list(range(1, total + 1))
    # Each sender's messages keep their order, and each ack names the seq delivered.
    for chatter in chatters:
        own = [text for _, sender, text in first if sender == chatter.user]
        assert own == [f"{chatter.user} {n}" for n in range(per_sender)]
    by_text = {text: seq for seq, _, text in first}
    assert all(ack["seq"] == by_text[text] for text, ack in acks.items())
    # Every node's replica serves the same history.
    until(
        lambda: all(len(history(node, "dev")) == total for node in nodes),
        what="every replica complete",
    )
    histories = [[(m["seq"], m["text"]) for m in history(node, "dev")] for node in nodes]
    assert histories[0] == histories[1] == histories[2]
    assert [text for _, text in histories[0]] == [text for _, _, text in first]


def test_a_resent_client_id_is_stored_once_across_nodes(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    watcher = cluster.client(b, "name=watcher")
    alice = cluster.client(a, "name=alice")
    first = alice.say("lobby", "only once", "same-id")
    # Sent again on the same node: Redis, not the node's database, finds the id.
    assert alice.say("lobby", "only once", "same-id") == first
    alice.close()
    # A guest is known by its name: once b has seen alice go, she gets her name back there
    # and sends the message again with its id.
    watcher.expect("presence", event="offline", user="alice")
    again = cluster.client(b, "name=alice")
    assert again.user == "alice"
    second = again.say("lobby", "only once", "same-id")
    assert second["seq"] == first["seq"]
    until(lambda: len(history(b, "lobby")) == 1, what="b's replica")
    assert [m["text"] for m in history(a, "lobby")] == ["only once"]


def login(node: Node, user: str, password: str) -> str:
    """Log in over HTTP on ``node``; the token from the cookie."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}/api/auth/login",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        cookie = response.headers["Set-Cookie"]
    return str(cookie.split(";", 1)[0].split("=", 1)[1])


def add_account(cluster: Cluster, node: str, user: str, password: str) -> None:
    """Create an account in the database of the node ``node`` (before it starts)."""
    database = cluster.directory / node / f"{node}.sqlite3"
    subprocess.run(
        [sys.executable, "-m", "chatd", "user", "add", user, "--db", str(database)],
        input=password,
        text=True,
        check=True,
        timeout=TIMEOUT * 3,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip


def test_a_dm_reaches_every_session_of_its_recipient_on_any_node(cluster: Cluster) -> None:
    add_account(cluster, "a", "bob", "correct horse battery")
    a, b = cluster.node("a"), cluster.node("b")
    alice = cluster.client(a, "name=alice")
    # Two sessions of one logged-in user, on two nodes; the token from one node's login
    # is good on the other (one secret).
    token = login(a, "bob", "correct horse battery")
    bob_on_a = cluster.client(a, f"token={token}")
    bob_on_b = cluster.client(b, f"token={token}")
    assert bob_on_a.user == bob_on_b.user == "bob"
    alice.send(type="dm", to="bob", text="psst", id="d1")
    ack = alice.expect("ack", id="d1")
    for each in (bob_on_a, bob_on_b, alice):
        dm = each.expect("dm", id="d1")
        assert (dm["dm"], dm["from"], dm["to"], dm["text"]) == (ack["dm"], "alice", "bob", "psst")
    # And back, from the session on the other node.
    bob_on_b.send(type="dm", to="alice", text="hi", id="d2")
    bob_on_b.expect("ack", id="d2")
    assert alice.expect("dm", id="d2")["text"] == "hi"
    assert bob_on_a.expect("dm", id="d2")["to"] == "alice"


# --- presence and typing ------------------------------------------------------------------------


def test_presence_and_typing_cross_nodes(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    bob = cluster.client(b, "name=bob&room=dev")
    until(lambda: room_members(a, "dev") == 1, what="a knows bob is in dev")
    alice = cluster.client(a, "name=alice&room=dev")
    assert "bob" in alice.welcome["online"]
    assert alice.joined["dev"]["members"] == ["alice", "bob"]
    bob.expect("presence", event="online", user="alice")
    bob.expect("presence", event="join", user="alice", room="dev")
    # A guest name taken on another node is not handed out again.
    other = cluster.client(b, "name=alice")
    assert other.user != "alice"
    other.close()
    alice.expect("presence", event="offline", user=other.user)

    alice.send(type="typing", room="dev", active=True)
    typing = bob.expect("typing", room="dev", user="alice")
    assert typing["active"] is True
    # A read receipt reaches the sender on the other node.
    seq = alice.say("dev", "read me", "r1")["seq"]
    bob.expect("message", room="dev", seq=seq)
    bob.send(type="receipt", room="dev", seq=seq, status="seen")
    receipt = alice.expect("receipt", room="dev", seq=seq)
    assert (receipt["user"], receipt["status"]) == ("bob", "seen")
    alice.send(type="leave", room="dev")
    alice.expect("left", room="dev")
    bob.expect("presence", event="leave", user="alice", room="dev")
    alice.close()
    bob.expect("presence", event="offline", user="alice")
    status, body = b.get("/api/status")
    assert status == 200 and body["nodes"] == 2 and body["bus"]["up"] is True


def test_resume_on_another_node_gets_what_was_missed(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    carol = cluster.client(a, "name=carol&room=dev")
    dave = cluster.client(b, "name=dave&room=dev")
    carol.say("dev", "before", "c1")
    last = room_messages(carol, "dev", 1)[-1]["seq"]
    carol.close()
    for number in range(5):
        dave.say("dev", f"while away {number}", f"d{number}")
    dave.send(type="dm", to="carol", text="you missed this", id="dm1")
    dave.expect("ack", id="dm1")
    back = cluster.client(b, "name=carol")
    back.send(type="resume", rooms={"dev": last}, dm=0, id="r1")
    missed = back.expect("history", room="dev", id="r1")
    assert [m["text"] for m in missed["messages"]] == [f"while away {n}" for n in range(5)]
    assert missed["has_more"] is False
    assert back.expect("dm", id="dm1")["text"] == "you missed this"


# --- failures -------------------------------------------------------------------------------------


def publish_until_closed(chatter: Chatter, prefix: str, count: int, acked: dict[str, int]) -> None:
    """Send ``count`` messages with ids; record each ack; stop quietly when cut off."""
    try:
        for number in range(count):
            chatter.send(
                type="message", room="dev", text=f"{prefix}{number}", id=f"{prefix}{number}"
            )
            time.sleep(0.002)
            while True:
                received = [m for m in chatter.inbox if m.get("type") == "ack"]
                for ack in received:
                    acked[ack["id"]] = ack["seq"]
                    chatter.inbox.remove(ack)
                if len(chatter.inbox) < 1000:
                    break
        deadline = time.monotonic() + TIMEOUT
        while len([k for k in acked if k.startswith(prefix)]) < count:
            if time.monotonic() > deadline:
                return
            ack = chatter.expect("ack")
            acked[ack["id"]] = ack["seq"]
    except (OSError, ConnectionClosed, AssertionError):
        return


def test_a_killed_node_loses_nothing_acknowledged(cluster: Cluster) -> None:
    add_account(cluster, "a", "victim", "correct horse battery")
    a, b = cluster.node("a"), cluster.node("b")
    token = login(a, "victim", "correct horse battery")
    watcher = cluster.client(b, "name=watcher&room=dev")
    bystander = cluster.client(a, "name=bystander&room=dev")
    victim = cluster.client(a, f"token={token}&room=dev")
    watcher.expect("presence", event="join", user="victim", room="dev")
    acked: dict[str, int] = {}
    total = 400
    sender = threading.Thread(target=publish_until_closed, args=(victim, "v", total, acked))
    sender.start()
    until(lambda: len(acked) >= 50, what="traffic before the kill")
    a.kill()
    sender.join(TIMEOUT * 2)
    assert len(acked) >= 50
    # Its client reconnects to another node as the same user, sends again what was not
    # acknowledged (same ids: what Redis stored before the kill is not stored twice).
    again = cluster.client(b, f"token={token}")
    missing = [f"v{n}" for n in range(total) if f"v{n}" not in acked]
    for key in missing:
        again.send(type="message", room="dev", text=key, id=key)
    for key in missing:
        acked[key] = again.expect("ack", id=key)["seq"]
    stored = history(b, "dev")
    assert_gapless(stored)
    assert sorted(m["text"] for m in stored) == sorted(f"v{n}" for n in range(total))
    assert all(stored[seq - 1]["text"] == key for key, seq in acked.items())
    # The dead node's other user goes offline for the rest of the cluster in bounded time.
    watcher.inbox.clear()
    started = time.monotonic()
    deadline = started + NODE_GONE_WITHIN
    gone: Message | None = None
    while gone is None and time.monotonic() < deadline:
        for message in watcher.sync():
            if message.get("type") == "presence" and message == {
                "type": "presence",
                "event": "offline",
                "user": bystander.user,
            }:
                gone = message
        time.sleep(0.2)
    assert gone is not None, "the killed node's user never went offline"
    assert b.get("/api/status")[1]["nodes"] == 1


def test_redis_restarted_during_traffic(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    alice = cluster.client(a, "name=alice&room=dev")
    bob = cluster.client(b, "name=bob&room=dev")
    alice.say("dev", "before", "before")
    cluster.redis.stop()
    until(lambda: a.get("/ready")[0] == 503, what="a not ready without Redis")
    body = a.get("/api/status")[1]
    assert body["bus"]["up"] is False and body["bus"]["last_error"]
    # Clients stay connected; typing still works between a node's own clients; messages
    # wait, unacknowledged.
    alice.send(type="message", room="dev", text="during", id="during")
    alice.sync()
    assert not [m for m in alice.inbox if m.get("type") == "ack"]
    assert "chatd_bus_up 0.0" in a.text("/metrics")
    cluster.redis.start()
    for node in (a, b):
        until(lambda node=node: node.get("/ready")[0] == 200, what="ready again")
    ack = alice.expect("ack", id="during")
    assert ack["seq"] == 2
    assert [m["text"] for m in room_messages(bob, "dev", 2)] == ["before", "during"]
    bob.say("dev", "after", "after")
    until(lambda: len(history(a, "dev")) == 3, what="a's replica")
    assert [m["text"] for m in history(a, "dev")] == ["before", "during", "after"]
    assert [m["text"] for m in history(b, "dev")] == ["before", "during", "after"]
    metrics = a.text("/metrics")
    assert "chatd_bus_up 1.0" in metrics
    assert "chatd_bus_reconnects_total 2.0" in metrics
    assert "chatd_cluster_nodes 2.0" in metrics
