"""Tests for chatd's hub and wire protocol over real sockets with a real SQLite file.

Every test runs a ``ChatServer`` on 127.0.0.1 (port 0) in a thread of its own, with its
database in ``tmp_path``, and talks to it with real WebSocket clients: ours
(``rfc6455.client.Client``) and, for independence, the ``websockets`` library. A client
reads JSON messages until one matches (``expect``); ``sync`` sends a ``ping`` and returns
everything that arrived before its ``pong``, which is how a test shows that a message did
*not* reach someone: the server sends in order on each connection, so anything it sent
before answering the ping has arrived by the time the pong does.

A few tests at the end drive the ``Hub`` directly (an in-memory database, fake peers, a
fake clock) for what is not reachable in time over the wire: session expiry and two
copies of one message in the same loop tick.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websockets_connect
from wire import WireClient, close_payload, encode

from chatd.app import STATIC_DIR, ChatServer
from chatd.config import ChatSettings
from chatd.hub import CLOSE_REPLACED, SESSION_GRACE, SHRUG, Hub
from chatd.limits import Limits
from chatd.protocol import MAX_TEXT
from chatd.storage import Storage
from rfc6455.client import Client, ConnectionClosed
from rfc6455.errors import InvalidHandshake
from rfc6455.server import Server, ServerConfig

TIMEOUT = 5.0
"""Seconds any single wait may take before the test fails."""

#: No keepalive pings to interfere; short close handshakes so teardown is quick.
CONFIG = ServerConfig(ping_interval=None, close_timeout=1.0)
#: The chat tests send as fast as they can: no rate limit (tests/test_chat_limits.py
#: tests the limits with their defaults).
UNLIMITED = ChatSettings(limits=Limits(message_rate=0))

Message = dict[str, Any]


# --- the server ---------------------------------------------------------------------------


class RunningChat:
    """A ``ChatServer`` listening on 127.0.0.1, served by a thread of its own.

    The server is built, served and closed on that thread: its SQLite connection belongs
    to the thread that opened it (``sqlite3``'s ``check_same_thread``), as it belongs to
    the event loop in production.
    """

    def __init__(
        self,
        database: Path,
        *,
        static_dir: Path = STATIC_DIR,
        settings: ChatSettings = UNLIMITED,
        config: ServerConfig = CONFIG,
    ) -> None:
        self.database = database
        self.static_dir = static_dir
        self.settings = settings
        self.config = config
        self.port = 0
        self.server: Server | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatd", daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("the chat server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            chat = ChatServer(
                self.database, self.config, static_dir=self.static_dir, settings=self.settings
            )
            chat.server.listen("127.0.0.1", 0)
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self.server = chat.server
        self.port = chat.server.addresses[0][1]
        self._ready.set()
        try:
            chat.server.serve_forever(shutdown_timeout=2.0)
        except BaseException as error:  # pragma: no cover - reported by stop()
            self._error = error
        finally:
            chat.close()

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?{query}" if query else "")

    def stop(self) -> None:
        """Shut the server down (close 1001 to every client) and close the database."""
        if self.server is not None:
            self.server.request_shutdown()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the chat server did not stop"
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --- clients ------------------------------------------------------------------------------

_ping_ids = itertools.count(1)


class Chatter:
    """A chat client: JSON messages out, JSON messages in, every wait bounded.

    Connecting reads the ``welcome`` and the ``joined`` of every room it lists.
    Subclasses move text frames over a WebSocket library.
    """

    def __init__(self) -> None:
        #: Messages read but not yet matched by ``expect`` (oldest first).
        self.inbox: list[Message] = []
        self.welcome = self.expect("welcome")
        self.session: str = self.welcome["session"]
        self.user: str = self.welcome["user"]
        self.joined = {room: self.expect("joined", room=room) for room in self.welcome["rooms"]}

    # what a library provides
    def send_text(self, text: str) -> None:
        raise NotImplementedError

    def send_binary(self, data: bytes) -> None:
        raise NotImplementedError

    def recv_text(self, timeout: float) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # the chat protocol
    def send(self, **message: Any) -> None:
        self.send_text(json.dumps(message))

    def say(self, room: str, text: str, message_id: str) -> Message:
        """Send a room message and return its ``ack``."""
        self.send(type="message", room=room, text=text, id=message_id)
        return self.expect("ack", id=message_id)

    def expect(self, message_type: str, **fields: Any) -> Message:
        """The first message of ``message_type`` whose ``fields`` have these values."""

        def matches(message: Message) -> bool:
            return message.get("type") == message_type and all(
                message.get(key) == value for key, value in fields.items()
            )

        for index, message in enumerate(self.inbox):
            if matches(message):
                return self.inbox.pop(index)
        deadline = time.monotonic() + TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.describe()} got no {message_type} {fields}; inbox: {self.inbox}"
                )
            message = json.loads(self.recv_text(remaining))
            if matches(message):
                return message
            self.inbox.append(message)

    def sync(self) -> list[Message]:
        """Everything the server sent before it answered a ``ping`` sent now; empties
        the inbox.
        """
        ping_id = f"sync-{next(_ping_ids)}"
        self.send(type="ping", id=ping_id)
        self.expect("pong", id=ping_id)
        received, self.inbox = self.inbox, []
        return received

    def describe(self) -> str:
        return getattr(self, "user", "a client")


class RfcChatter(Chatter):
    """A ``Chatter`` on our own blocking ``rfc6455.client.Client``."""

    def __init__(self, url: str) -> None:
        self.client = Client.connect(url, timeout=TIMEOUT, close_timeout=TIMEOUT)
        super().__init__()

    def send_text(self, text: str) -> None:
        self.client.send_text(text)

    def send_binary(self, data: bytes) -> None:
        self.client.send_binary(data)

    def recv_text(self, timeout: float) -> str:
        message = self.client.recv(timeout)
        assert isinstance(message, str), f"a binary message: {message!r}"
        return message

    def close(self) -> None:
        self.client.close(timeout=TIMEOUT)


class WebsocketsChatter(Chatter):
    """A ``Chatter`` on the ``websockets`` library's threading client."""

    def __init__(self, url: str) -> None:
        # Entered as a context manager (websockets 17 deprecates a bare connect());
        # close() leaves it.
        self.connection: ClientConnection = websockets_connect(
            url, open_timeout=TIMEOUT, close_timeout=TIMEOUT
        ).__enter__()
        super().__init__()

    def send_text(self, text: str) -> None:
        self.connection.send(text)

    def send_binary(self, data: bytes) -> None:
        self.connection.send(data)

    def recv_text(self, timeout: float) -> str:
        message = self.connection.recv(timeout)
        assert isinstance(message, str), f"a binary message: {message!r}"
        return message

    def close(self) -> None:
        self.connection.close()

    def drop(self) -> None:
        """End the TCP connection without a closing handshake (the server sees 1006)."""
        self.connection.socket.shutdown(socket.SHUT_RDWR)
        self.connection.close()


Connect = Callable[..., Chatter]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "chat.sqlite3"


@pytest.fixture
def chat(database: Path) -> Iterator[RunningChat]:
    with RunningChat(database) as running:
        yield running


@pytest.fixture
def connect(chat: RunningChat) -> Iterator[Connect]:
    """``connect(name, **query)``: a connected ``RfcChatter`` (``websockets=True`` for
    a ``WebsocketsChatter``); all are closed before the server stops.
    """
    opened: list[Chatter] = []

    def connect_(name: str | None = None, *, websockets: bool = False, **query: str) -> Chatter:
        if name is not None:
            query = {"name": name, **query}
        url = chat.url("&".join(f"{key}={value}" for key, value in query.items()))
        chatter = WebsocketsChatter(url) if websockets else RfcChatter(url)
        opened.append(chatter)
        return chatter

    yield connect_
    for chatter in opened:
        with contextlib.suppress(Exception):  # a connection the test already ended
            chatter.close()


def of_type(messages: list[Message], message_type: str) -> list[Message]:
    return [message for message in messages if message["type"] == message_type]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def read_rows(database: Path, query: str, *parameters: Any) -> list[tuple[Any, ...]]:
    """Rows from the chat database, read with a connection of our own."""
    db = sqlite3.connect(database)
    try:
        return db.execute(query, parameters).fetchall()
    finally:
        db.close()


# --- connecting ---------------------------------------------------------------------------


def test_welcome_and_joined_lobby(connect: Connect) -> None:
    alice = connect("alice")
    welcome = alice.welcome
    assert welcome["protocol"] == 1
    assert isinstance(welcome["session"], str)
    assert len(welcome["session"]) >= 16
    assert welcome["user"] == "alice"
    assert welcome["rooms"] == ["lobby"]
    assert welcome["limits"] == {"max_text": 4000, "max_name": 50, "history_page": 50}
    assert alice.joined["lobby"] == {
        "type": "joined",
        "room": "lobby",
        "members": ["alice"],
        "messages": [],
        "last_seq": 0,
    }
    assert alice.sync() == [{"type": "presence", "event": "online", "user": "alice"}]
    assert welcome["online"] == ["alice"]
    assert connect("bob").welcome["online"] == ["alice", "bob"]


def test_taken_names_get_a_suffix_and_guests_a_default_name(connect: Connect) -> None:
    first, second, third = connect("alice"), connect("alice"), connect("alice")
    assert [first.user, second.user, third.user] == ["alice", "alice-2", "alice-3"]
    assert len({first.session, second.session, third.session}) == 3
    assert connect().user == "guest"
    assert third.joined["lobby"]["members"] == ["alice", "alice-2", "alice-3"]


def test_the_room_parameter_joins_it_at_once(connect: Connect) -> None:
    alice = connect("alice", room="dev")
    assert alice.welcome["rooms"] == ["dev", "lobby"]
    assert alice.joined["dev"]["members"] == ["alice"]
    bob = connect("bob", room="dev")
    assert bob.joined["dev"]["members"] == ["alice", "bob"]
    alice.expect("presence", event="join", user="bob", room="dev")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ws?name=no%20spaces", 400),
        ("/ws?name=" + "x" * 51, 400),
        ("/ws?room=a/b", 400),
        ("/chat", 404),
        ("/", 404),
    ],
)
def test_bad_upgrades_are_refused(chat: RunningChat, path: str, status: int) -> None:
    with pytest.raises(InvalidHandshake) as refused:
        Client.connect(f"ws://127.0.0.1:{chat.port}{path}", timeout=TIMEOUT)
    assert refused.value.status == status


# --- rooms and messages -------------------------------------------------------------------


def test_messages_reach_exactly_the_rooms_members(connect: Connect) -> None:
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    alice.send(type="join", room="dev")
    alice.expect("joined", room="dev")
    bob.send(type="join", room="dev")
    assert bob.expect("joined", room="dev")["members"] == ["alice", "bob"]
    carol.send(type="join", room="ops")
    assert carol.expect("joined", room="ops")["members"] == ["carol"]
    for each in (alice, bob, carol):
        each.sync()

    before = now_ms()
    ack = alice.say("dev", "hello dev", "a1")
    after = now_ms()
    assert ack == {"type": "ack", "id": "a1", "room": "dev", "seq": 1, "ts": ack["ts"]}
    assert before <= ack["ts"] <= after
    expected = {
        "type": "message",
        "room": "dev",
        "seq": 1,
        "ts": ack["ts"],
        "from": "alice",
        "text": "hello dev",
        "kind": "text",
        "id": "a1",
    }
    assert alice.expect("message", room="dev") == expected  # echoed, with the client id
    assert bob.expect("message", room="dev") == expected

    assert bob.say("dev", "hi alice", "b1")["seq"] == 2
    assert carol.say("ops", "alone here", "c1")["seq"] == 1  # seq is per room
    assert alice.say("lobby", "hello all", "a2")["seq"] == 1

    alice_got = of_type(alice.sync(), "message")
    bob_got = of_type(bob.sync(), "message")
    carol_got = of_type(carol.sync(), "message")
    assert [(m["room"], m["seq"], m["from"]) for m in alice_got] == [
        ("dev", 2, "bob"),
        ("lobby", 1, "alice"),
    ]
    assert [(m["room"], m["seq"], m["from"]) for m in bob_got] == [
        ("dev", 2, "bob"),
        ("lobby", 1, "alice"),
    ]
    assert [(m["room"], m["seq"], m["from"]) for m in carol_got] == [
        ("ops", 1, "carol"),
        ("lobby", 1, "alice"),
    ]


def test_pipelined_messages_get_increasing_seqs_in_order(connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob", websockets=True)
    bob.sync()
    for number in range(1, 31):
        alice.send(type="message", room="lobby", text=f"n{number}", id=f"p{number}")
    acks = [alice.expect("ack", id=f"p{number}") for number in range(1, 31)]
    assert [ack["seq"] for ack in acks] == list(range(1, 31))
    received = [bob.expect("message", seq=seq) for seq in range(1, 31)]
    assert [m["text"] for m in received] == [f"n{number}" for number in range(1, 31)]
    assert of_type(bob.sync(), "message") == []  # each exactly once


def test_ack_arrives_only_after_commit(connect: Connect, database: Path) -> None:
    alice = connect("alice")
    connect("bob")  # a DM needs someone to send it to
    reader = sqlite3.connect(database)  # a second connection: sees only what is committed
    try:
        for number in range(10):
            alice.send(type="message", room="lobby", text=f"durable {number}", id=f"d{number}")
            ack = alice.expect("ack", id=f"d{number}")
            rows = reader.execute(
                "SELECT seq, ts, sender, text, client_id FROM messages"
                " WHERE room = 'lobby' AND seq = ?",
                (ack["seq"],),
            ).fetchall()
            assert rows == [(ack["seq"], ack["ts"], "alice", f"durable {number}", f"d{number}")]
        alice.send(type="dm", to="bob", text="durable dm", id="dm1")
        ack = alice.expect("ack", id="dm1")
        rows = reader.execute(
            "SELECT sender, recipient, text, ts FROM dms WHERE id = ?", (ack["dm"],)
        ).fetchall()
        assert rows == [("alice", "bob", "durable dm", ack["ts"])]
    finally:
        reader.close()


def test_messages_without_an_id(connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob")
    bob.sync()
    alice.send(type="message", room="lobby", text="no id")
    alice.send(type="message", room="lobby", text="no id")  # not a resend: stored twice
    alice.send(type="dm", to="bob", text="no id either")
    acks = [alice.expect("ack"), alice.expect("ack"), alice.expect("ack")]
    assert [ack["id"] for ack in acks] == [None, None, None]
    assert [ack.get("seq") for ack in acks] == [1, 2, None]
    received = bob.sync()
    assert [m["id"] for m in of_type(received, "message")] == [None, None]
    assert [m["id"] for m in of_type(received, "dm")] == [None]


def test_a_resent_id_gets_the_same_ack_and_is_stored_once(connect: Connect, database: Path) -> None:
    alice, bob = connect("alice"), connect("bob")
    bob.sync()
    first = alice.say("lobby", "once", "same")
    again = alice.say("lobby", "once, resent", "same")
    assert again == first
    # Pipelined copies: whether they land in one loop tick or two, one ack each, one seq.
    for _ in range(3):
        alice.send(type="message", room="lobby", text="twice", id="pipe")
    acks = [alice.expect("ack", id="pipe") for _ in range(3)]
    assert acks[0]["seq"] == 2
    assert acks == [acks[0]] * 3
    # The same id in another room, or from another user, is another message.
    alice.send(type="join", room="dev")
    alice.expect("joined", room="dev")
    assert alice.say("dev", "once", "same")["seq"] == 1
    assert bob.say("lobby", "mine", "same")["seq"] == 3

    assert [m["seq"] for m in of_type(bob.sync(), "message")] == [1, 2, 3]
    assert read_rows(database, "SELECT seq, text FROM messages WHERE room = 'lobby'") == [
        (1, "once"),
        (2, "twice"),
        (3, "mine"),
    ]
    alice.send(type="dm", to="bob", text="dm", id="dm-same")
    dm_ack = alice.expect("ack", id="dm-same")
    alice.send(type="dm", to="bob", text="dm", id="dm-same")
    assert alice.expect("ack", id="dm-same") == dm_ack
    assert read_rows(database, "SELECT count(*) FROM dms") == [(1,)]


def test_direct_messages(connect: Connect) -> None:
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    for each in (alice, bob, carol):
        each.sync()
    alice.send(type="dm", to="bob", text="psst", id="x1")
    ack = alice.expect("ack", id="x1")
    assert set(ack) == {"type", "id", "dm", "ts"}
    expected = {
        "type": "dm",
        "dm": ack["dm"],
        "from": "alice",
        "to": "bob",
        "text": "psst",
        "ts": ack["ts"],
        "id": "x1",
    }
    assert bob.expect("dm") == expected
    assert alice.expect("dm") == expected  # the sender's sessions get it too
    assert carol.sync() == []
    assert of_type(alice.sync(), "dm") == []  # once
    # A DM to oneself arrives once.
    alice.send(type="dm", to="alice", text="note to self", id="x2")
    alice.expect("ack", id="x2")
    assert [m["text"] for m in of_type(alice.sync(), "dm")] == ["note to self"]
    # DM ids increase.
    bob.send(type="dm", to="alice", text="reply", id="y1")
    assert bob.expect("ack", id="y1")["dm"] > ack["dm"]
    assert alice.expect("dm", id="y1")["from"] == "bob"


def test_dm_to_an_unknown_user(connect: Connect) -> None:
    alice = connect("alice")
    alice.send(type="dm", to="nobody", text="hello?", id="u1")
    error = alice.expect("error", id="u1")
    assert error["code"] == "no_such_user"
    assert error["message"]
    alice.send(type="message", room="lobby", text="/msg nobody hello", id="u2")
    assert alice.expect("error", id="u2")["code"] == "no_such_user"
    assert alice.say("lobby", "still here", "u3")["seq"] == 1


# --- commands -----------------------------------------------------------------------------


def test_msg_command_sends_a_dm(connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob")
    alice.send(type="message", room="lobby", text="/msg bob   hello  there ", id="c1")
    ack = alice.expect("ack", id="c1")
    dm = bob.expect("dm", dm=ack["dm"])
    assert (dm["from"], dm["to"], dm["text"]) == ("alice", "bob", "hello  there")
    assert of_type(bob.sync(), "message") == []  # not a room message
    for text, code in [("/msg bob", "bad_message"), ("/msg b!b hello", "bad_name")]:
        alice.send(type="message", room="lobby", text=text, id="c2")
        assert alice.expect("error", id="c2")["code"] == code


def test_join_and_leave_commands(connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob")
    alice.send(type="message", room="lobby", text="/join dev", id="j1")
    assert alice.expect("joined", room="dev")["members"] == ["alice"]
    bob.send(type="message", room="lobby", text="/join dev", id="j2")
    bob.expect("joined", room="dev")
    alice.expect("presence", event="join", user="bob", room="dev")
    bob.send(type="message", room="dev", text="/leave", id="j3")
    assert bob.expect("left") == {"type": "left", "room": "dev"}
    alice.expect("presence", event="leave", user="bob", room="dev")
    bob.send(type="message", room="dev", text="still there?", id="j4")
    assert bob.expect("error", id="j4")["code"] == "not_in_room"
    bob.send(type="message", room="lobby", text="/join bad/room", id="j5")
    assert bob.expect("error", id="j5")["code"] == "bad_room"
    bob.send(type="message", room="lobby", text="/join", id="j6")
    assert bob.expect("error", id="j6")["code"] == "bad_room"


def test_nick_command(connect: Connect) -> None:
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    carol.send(type="leave", room="lobby")
    carol.expect("left", room="lobby")
    for each in (alice, bob, carol):
        each.sync()
    alice.send(type="message", room="lobby", text="/nick alicia", id="n1")
    rename = {"type": "presence", "event": "rename", "user": "alicia", "old": "alice"}
    for each in (alice, bob, carol):
        assert each.expect("presence", event="rename") == rename
    assert alice.say("lobby", "new name", "n2")["seq"] == 1
    assert bob.expect("message", seq=1)["from"] == "alicia"
    alice.send(type="message", room="lobby", text="/who", id="n3")
    assert alice.expect("system")["text"] == "In lobby: alicia, bob"

    for text, code in [
        ("/nick bob", "name_taken"),
        ("/nick two words", "bad_name"),
        ("/nick", "bad_name"),
        ("/nick " + "x" * 51, "bad_name"),
    ]:
        alice.send(type="message", room="lobby", text=text, id="n4")
        assert alice.expect("error", id="n4")["code"] == code, text
    alice.send(type="message", room="lobby", text="/nick alicia", id="n5")  # no change
    assert of_type(bob.sync(), "presence") == []
    # The old name is free again.
    assert connect("alice").user == "alice"


def test_me_shrug_who_help_and_unknown_commands(connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob")
    bob.sync()
    assert alice.say("lobby", "/me waves", "m1")["seq"] == 1
    me = bob.expect("message", seq=1)
    assert (me["kind"], me["text"], me["from"], me["id"]) == ("me", "waves", "alice", "m1")
    assert alice.say("lobby", "/shrug", "m2")["seq"] == 2
    assert bob.expect("message", seq=2)["text"] == SHRUG == "¯\\_(ツ)_/¯"
    assert alice.say("lobby", "/shrug oh well", "m3")["seq"] == 3
    shrug = bob.expect("message", seq=3)
    assert (shrug["text"], shrug["kind"]) == ("oh well ¯\\_(ツ)_/¯", "text")
    assert alice.say("lobby", "//not a command", "m4")["seq"] == 4
    assert bob.expect("message", seq=4)["text"] == "/not a command"

    alice.send(type="message", room="lobby", text="/who", id="m5")
    assert alice.expect("system") == {
        "type": "system",
        "room": "lobby",
        "text": "In lobby: alice, bob",
    }
    alice.send(type="message", room="lobby", text="/help", id="m6")
    help_text = alice.expect("system")["text"]
    for command in ("/msg", "/join", "/leave", "/nick", "/me", "/shrug", "/who", "/help"):
        assert command in help_text
    for text, code in [
        ("/dance", "unknown_command"),
        ("/me", "bad_message"),
        ("/", "unknown_command"),
    ]:
        alice.send(type="message", room="lobby", text=text, id="m7")
        assert alice.expect("error", id="m7")["code"] == code, text
    # Nothing of that reached bob, and nothing was stored.
    assert of_type(bob.sync(), "system") == []
    assert alice.say("lobby", "after", "m8")["seq"] == 5
    # Command names are case-insensitive, as the UI treats them.
    assert alice.say("lobby", "/ME shouts", "m9")["seq"] == 6
    assert bob.expect("message", seq=6)["kind"] == "me"
    alice.send(type="message", room="lobby", text="/Who", id="m10")
    assert alice.expect("system")["text"] == "In lobby: alice, bob"


# --- typing, presence, receipts, ping -----------------------------------------------------


def test_typing_is_relayed_to_the_others_only(connect: Connect) -> None:
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    carol.send(type="leave", room="lobby")
    carol.expect("left", room="lobby")
    for each in (alice, bob, carol):
        each.sync()
    alice.send(type="typing", room="lobby", active=True)
    assert bob.expect("typing") == {
        "type": "typing",
        "room": "lobby",
        "user": "alice",
        "active": True,
    }
    alice.send(type="typing", room="lobby", active=False)
    assert bob.expect("typing")["active"] is False
    assert of_type(alice.sync(), "typing") == []
    assert of_type(carol.sync(), "typing") == []
    carol.send(type="typing", room="lobby", id="t1")
    assert carol.expect("error", id="t1")["code"] == "not_in_room"


def test_presence(connect: Connect) -> None:
    alice = connect("alice")
    alice.sync()
    bob = connect("bob", websockets=True)
    assert alice.expect("presence", user="bob", event="online") == {
        "type": "presence",
        "event": "online",
        "user": "bob",
    }
    assert alice.expect("presence", user="bob", event="join") == {
        "type": "presence",
        "event": "join",
        "user": "bob",
        "room": "lobby",
    }
    alice.send(type="join", room="dev")
    alice.expect("joined", room="dev")
    bob.send(type="join", room="dev")
    bob.expect("joined", room="dev")
    alice.expect("presence", user="bob", event="join", room="dev")
    bob.send(type="leave", room="dev")
    bob.expect("left", room="dev")
    alice.expect("presence", user="bob", event="leave", room="dev")
    bob.send(type="typing", room="lobby")
    alice.expect("typing", user="bob", active=True)
    alice.sync()

    bob.close()
    # Leaving clears bob's typing, then he leaves each room and goes offline.
    assert alice.expect("typing", user="bob") == {
        "type": "typing",
        "room": "lobby",
        "user": "bob",
        "active": False,
    }
    alice.expect("presence", user="bob", event="leave", room="lobby")
    alice.expect("presence", user="bob", event="offline")
    assert of_type(alice.sync(), "presence") == []


def test_receipts_are_relayed_to_the_sender(connect: Connect, database: Path) -> None:
    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    seq = alice.say("lobby", "did you read this?", "r1")["seq"]
    for each in (alice, bob, carol):
        each.sync()
    bob.send(type="receipt", room="lobby", seq=seq, status="delivered")
    assert alice.expect("receipt") == {
        "type": "receipt",
        "room": "lobby",
        "seq": seq,
        "user": "bob",
        "status": "delivered",
    }
    bob.send(type="receipt", room="lobby", seq=seq, status="delivered")  # no news
    bob.send(type="receipt", room="lobby", seq=seq, status="seen")
    assert alice.expect("receipt")["status"] == "seen"
    assert of_type(alice.sync(), "receipt") == []
    assert of_type(carol.sync(), "receipt") == []
    assert of_type(bob.sync(), "receipt") == []
    # A receipt for one's own message is kept, not relayed.
    alice.send(type="receipt", room="lobby", seq=seq, status="seen")
    assert of_type(alice.sync(), "receipt") == []
    assert sorted(read_rows(database, "SELECT user, delivered, seen FROM receipts")) == [
        ("alice", seq, seq),
        ("bob", seq, seq),
    ]
    # Receipts beyond the last message, or in a room one is not in, are refused.
    bob.send(type="receipt", room="lobby", seq=seq + 1, status="seen", id="r2")
    assert bob.expect("error", id="r2")["code"] == "bad_message"
    bob.send(type="receipt", room="elsewhere", seq=1, status="seen", id="r3")
    assert bob.expect("error", id="r3")["code"] == "not_in_room"


def test_ping_gets_pong(connect: Connect) -> None:
    alice = connect("alice")
    before = now_ms()
    alice.send(type="ping", id="hb-1")
    pong = alice.expect("pong")
    assert pong == {"type": "pong", "id": "hb-1", "ts": pong["ts"]}
    assert before <= pong["ts"] <= now_ms()
    alice.send(type="ping")
    assert alice.expect("pong")["id"] is None


# --- history and resume ---------------------------------------------------------------------


def test_history_pages_backwards(connect: Connect) -> None:
    alice = connect("alice")
    for number in range(1, 121):
        alice.send(type="message", room="lobby", text=f"m{number}", id=f"h{number}")
    assert alice.expect("ack", id="h120")["seq"] == 120

    def page(**fields: Any) -> tuple[list[int], bool]:
        alice.send(type="history", room="lobby", id="page", **fields)
        answer = alice.expect("history", id="page")
        assert answer["room"] == "lobby"
        seqs = [message["seq"] for message in answer["messages"]]
        assert [m["text"] for m in answer["messages"]] == [f"m{seq}" for seq in seqs]
        return seqs, answer["has_more"]

    assert page() == (list(range(71, 121)), True)
    assert page(before=71) == (list(range(21, 71)), True)
    assert page(before=21) == (list(range(1, 21)), False)
    assert page(before=21, limit=20) == (list(range(1, 21)), False)
    assert page(before=22, limit=20) == (list(range(2, 22)), True)
    assert page(limit=200) == (list(range(1, 121)), False)
    assert page(limit=1) == ([120], True)
    assert page(before=1) == ([], False)
    assert page(before=10**6, limit=3) == ([118, 119, 120], True)

    # A newcomer's joined holds the last 50, oldest first.
    bob = connect("bob")
    joined = bob.joined["lobby"]
    assert joined["last_seq"] == 120
    assert [m["seq"] for m in joined["messages"]] == list(range(71, 121))
    # Another room's history is its own.
    alice.send(type="history", room="empty", id="e")
    assert alice.expect("history", id="e") == {
        "type": "history",
        "room": "empty",
        "messages": [],
        "has_more": False,
        "id": "e",
    }


def test_resume_after_a_dropped_connection(connect: Connect) -> None:
    alice = connect("alice")
    bob = connect("bob", websockets=True, room="dev")
    assert isinstance(bob, WebsocketsChatter)
    alice.send(type="join", room="dev")
    alice.expect("joined", room="dev")
    alice.say("lobby", "l1", "a1")
    alice.say("dev", "d1", "a2")
    bob.expect("message", room="lobby", seq=1)
    bob.expect("message", room="dev", seq=1)
    alice.sync()

    bob.drop()
    alice.expect("presence", event="offline", user="bob")
    for number in range(2, 5):
        alice.say("lobby", f"l{number}", f"l{number}")
    for number in range(2, 4):
        alice.say("dev", f"d{number}", f"d{number}")

    again = connect(websockets=True, session=bob.session)
    assert again.session == bob.session
    assert again.user == "bob"
    assert again.welcome["rooms"] == ["dev", "lobby"]
    assert again.joined["dev"]["last_seq"] == 3
    again.send(type="resume", rooms={"lobby": 1, "dev": 1}, id="res")
    lobby = again.expect("history", room="lobby", id="res")
    dev = again.expect("history", room="dev", id="res")
    assert [(m["seq"], m["text"]) for m in lobby["messages"]] == [(2, "l2"), (3, "l3"), (4, "l4")]
    assert [(m["seq"], m["text"]) for m in dev["messages"]] == [(2, "d2"), (3, "d3")]
    assert not lobby["has_more"]
    assert not dev["has_more"]
    assert of_type(again.sync(), "history") == []
    # Others saw bob come back; live messages continue with no gap.
    alice.expect("presence", event="online", user="bob")
    alice.say("dev", "d4", "d4")
    assert again.expect("message", room="dev")["seq"] == 4
    # Resuming a room one has left joins it again; an up-to-date seq gets nothing.
    again.send(type="leave", room="dev")
    again.expect("left", room="dev")
    again.send(type="resume", rooms={"dev": 4})
    again.expect("joined", room="dev")
    assert again.expect("history", room="dev")["messages"] == []


def test_a_second_connection_with_the_session_replaces_the_first(connect: Connect) -> None:
    alice = connect("alice")
    first = connect("bob")
    assert isinstance(first, RfcChatter)
    alice.sync()
    second = connect(session=first.session)
    assert (second.session, second.user) == (first.session, "bob")
    # What the replaced connection still sends is not the session's any more.
    first.send(type="message", room="lobby", text="from a ghost", id="ghost")
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            first.client.recv(TIMEOUT)
    assert closed.value.code == CLOSE_REPLACED == 4001
    alice.say("lobby", "who gets this?", "w1")
    assert second.expect("message", seq=1)["text"] == "who gets this?"
    # No ghost session: alice sees one bob, and the swap makes no presence at all.
    alice.send(type="message", room="lobby", text="/who", id="w2")
    assert alice.expect("system")["text"] == "In lobby: alice, bob"
    assert of_type(alice.sync(), "presence") == []
    assert [m["text"] for m in of_type(second.sync(), "message")] == []  # no ghost message
    # A room named on the reconnect is new to the others: that is announced.
    third = connect(session=second.session, room="dev")
    assert third.welcome["rooms"] == ["dev", "lobby"]
    assert of_type(alice.sync(), "presence") == []  # alice is not in dev
    alice.send(type="join", room="dev")
    assert alice.expect("joined", room="dev")["members"] == ["alice", "bob"]


def test_an_unknown_session_gets_a_new_one(connect: Connect) -> None:
    alice = connect("alice", session="no-such-session")
    assert alice.session != "no-such-session"
    assert alice.user == "alice"


def test_a_name_taken_while_away_is_suffixed_on_resume(connect: Connect) -> None:
    first = connect("alice", websockets=True)
    assert isinstance(first, WebsocketsChatter)
    first.drop()
    other = connect("alice")
    assert other.user == "alice"
    back = connect(session=first.session)
    assert back.session == first.session
    assert back.user == "alice-2"


def test_restart_keeps_history(database: Path) -> None:
    with RunningChat(database) as chat:
        alice = RfcChatter(chat.url("name=alice"))
        alice.send(type="join", room="dev")
        alice.expect("joined", room="dev")
        for number in range(1, 6):
            alice.say("lobby", f"before restart {number}", f"r{number}")
        alice.say("dev", "dev 1", "dev1")
        alice.send(type="dm", to="alice", text="to myself", id="dm1")
        dm = alice.expect("ack", id="dm1")["dm"]
        # Shutting down, the server closes alice's connection as going away (1001).
        assert chat.server is not None
        chat.server.request_shutdown()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                alice.client.recv(TIMEOUT)
        assert closed.value.code == 1001

    with RunningChat(database) as chat:
        bob = RfcChatter(chat.url("name=bob&room=dev"))
        lobby = bob.joined["lobby"]
        assert lobby["last_seq"] == 5
        assert [m["text"] for m in lobby["messages"]] == [
            f"before restart {number}" for number in range(1, 6)
        ]
        assert [m["text"] for m in bob.joined["dev"]["messages"]] == ["dev 1"]
        assert bob.say("lobby", "after restart", "b1")["seq"] == 6
        assert bob.say("dev", "dev 2", "b2")["seq"] == 2
        bob.send(type="dm", to="bob", text="again", id="dm2")
        assert bob.expect("ack", id="dm2")["dm"] == dm + 1
        # A resend of an id from before the restart is still recognised.
        alice = RfcChatter(chat.url("name=alice"))
        assert alice.say("lobby", "resent", "r3")["seq"] == 3
        bob.close()
        alice.close()
    assert read_rows(database, "SELECT count(*) FROM messages") == [(8,)]


# --- invalid input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "message_id"),
    [
        ("{not json", "bad_json", None),
        ("[1, 2]", "bad_json", None),
        ('"hello"', "bad_json", None),
        ('{"type": "ping", "id": 7}', "bad_message", None),
        ('{"type": "shout", "id": "i1"}', "unknown_type", "i1"),
        ('{"id": "i2"}', "bad_message", "i2"),
        ('{"type": "message", "room": "lobby", "id": "i3"}', "bad_message", "i3"),
        ('{"type": "message", "room": "lobby", "text": 5, "id": "i4"}', "bad_message", "i4"),
        ('{"type": "message", "room": "lobby", "text": "  ", "id": "i5"}', "bad_message", "i5"),
        ('{"type": "join", "room": "bad room", "id": "i6"}', "bad_room", "i6"),
        ('{"type": "join", "room": ["lobby"], "id": "i7"}', "bad_message", "i7"),
        ('{"type": "message", "room": "dev", "text": "hi", "id": "i8"}', "not_in_room", "i8"),
        ('{"type": "leave", "room": "dev", "id": "i9"}', "not_in_room", "i9"),
        ('{"type": "dm", "to": "no one", "text": "hi", "id": "i10"}', "bad_name", "i10"),
        ('{"type": "typing", "room": "lobby", "active": "yes", "id": "i11"}', "bad_message", "i11"),
        ('{"type": "history", "room": "lobby", "limit": 201, "id": "i12"}', "bad_message", "i12"),
        ('{"type": "resume", "rooms": {"lobby": 1e400}, "id": "i13"}', "bad_message", "i13"),
        (
            '{"type": "resume", "rooms": {"lobby": 100000000000000000000}, "id": "i14"}',
            "bad_message",
            "i14",
        ),
        ('{"type": "receipt", "room": "lobby", "seq": 1, "id": "i15"}', "bad_message", "i15"),
        (
            json.dumps({"type": "message", "room": "lobby", "text": "x" * 4001, "id": "i16"}),
            "too_long",
            "i16",
        ),
    ],
)
def test_invalid_input_gets_an_error_and_the_connection_stays_usable(
    connect: Connect, text: str, code: str, message_id: str | None
) -> None:
    alice, bob = connect("alice"), connect("bob")
    bob.sync()
    alice.send_text(text)
    error = alice.expect("error")
    assert error["code"] == code
    assert error["id"] == message_id
    assert isinstance(error["message"], str)
    assert error["message"]
    assert alice.say("lobby", "still works", "ok")["seq"] == 1
    assert [m["text"] for m in of_type(bob.sync(), "message")] == ["still works"]


def test_text_of_exactly_the_limit_is_accepted(connect: Connect) -> None:
    alice = connect("alice")
    ack = alice.say("lobby", "é" * MAX_TEXT, "max")
    assert alice.expect("message", seq=ack["seq"])["text"] == "é" * MAX_TEXT


def test_binary_frames_are_unsupported(connect: Connect) -> None:
    for chatter in (connect("alice"), connect("bob", websockets=True)):
        chatter.send_binary(b'{"type": "ping"}')
        error = chatter.expect("error")
        assert error["code"] == "unsupported"
        assert error["id"] is None
        chatter.send(type="ping", id="after")
        chatter.expect("pong", id="after")


def test_many_errors_in_a_row_do_not_close_the_connection(connect: Connect) -> None:
    alice = connect("alice")
    for _ in range(50):
        alice.send_text("nope")
    for _ in range(50):
        alice.expect("error", code="bad_json")
    assert alice.say("lobby", "fine", "f")["seq"] == 1


# --- the hub without sockets ------------------------------------------------------------------


class FakePeer:
    """A connection as the hub sees it: records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed_with: tuple[int, str] | None = None

    def send_text(self, text: str) -> bool:
        self.sent.append(json.loads(text))
        return True

    def send_prepared(self, prepared: Any) -> bool:
        self.sent.extend(json.loads(payload) for _, payload in prepared.messages)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)

    def take(self, message_type: str) -> list[Message]:
        return [message for message in self.sent if message["type"] == message_type]


@pytest.fixture
def hub() -> Iterator[tuple[Hub, list[float]]]:
    clock = [1000.0]
    storage = Storage(":memory:")
    try:
        yield Hub(storage, prepare=Server.prepare_many, clock=lambda: clock[0]), clock
    finally:
        storage.close()


def test_copies_of_a_message_in_one_tick_are_stored_once_and_each_acked(
    hub: tuple[Hub, list[float]],
) -> None:
    chat_hub, _ = hub
    alice_peer, bob_peer = FakePeer(), FakePeer()
    alice = chat_hub.connect(alice_peer, "alice")
    chat_hub.connect(bob_peer, "bob")
    chat_hub.flush()
    frame = json.dumps({"type": "message", "room": "lobby", "text": "hi", "id": "dup"})
    chat_hub.receive(alice, frame)
    chat_hub.receive(alice, frame)
    assert alice_peer.take("ack") == []  # nothing before the commit
    assert chat_hub.flush() == 1
    acks = alice_peer.take("ack")
    assert len(acks) == 2
    assert acks[0] == acks[1]
    assert acks[0]["seq"] == 1
    assert len(bob_peer.take("message")) == 1


def test_detached_sessions_expire_after_the_grace_period(hub: tuple[Hub, list[float]]) -> None:
    chat_hub, clock = hub
    peer = FakePeer()
    session = chat_hub.connect(peer, "alice")
    assert chat_hub.expire_sessions() == 0  # attached sessions never expire
    chat_hub.disconnect(session)
    chat_hub.disconnect(session)  # a second time does nothing
    clock[0] += SESSION_GRACE - 1
    assert chat_hub.expire_sessions() == 0
    resumed = chat_hub.connect(FakePeer(), "ignored", session_id=session.id)
    assert resumed is session
    chat_hub.disconnect(resumed)
    clock[0] += SESSION_GRACE + 1
    assert chat_hub.expire_sessions() == 1
    fresh = chat_hub.connect(FakePeer(), "alice", session_id=session.id)
    assert fresh.id != session.id
    status = chat_hub.status()
    assert (status["connections"], status["sessions"], status["users_online"]) == (1, 1, 1)


def test_a_resent_dm_is_acked_even_when_its_recipient_is_gone(
    hub: tuple[Hub, list[float]],
) -> None:
    """A client resends what was not acknowledged after a reconnect: a DM that was stored
    gets its original ack, not ``no_such_user``, once the recipient has left.
    """
    chat_hub, clock = hub
    alice_peer = FakePeer()
    alice = chat_hub.connect(alice_peer, "alice")
    bob = chat_hub.connect(FakePeer(), "bob")
    frame = json.dumps({"type": "dm", "to": "bob", "text": "hi", "id": "d1"})
    chat_hub.receive(alice, frame)
    chat_hub.flush()
    (ack,) = alice_peer.take("ack")
    chat_hub.disconnect(bob)
    clock[0] += SESSION_GRACE + 1
    assert chat_hub.expire_sessions() == 1
    chat_hub.receive(alice, frame)
    assert alice_peer.take("error") == []
    assert alice_peer.take("ack") == [ack, ack]
    chat_hub.receive(alice, json.dumps({"type": "dm", "to": "bob", "text": "new", "id": "d2"}))
    assert [error["code"] for error in alice_peer.take("error")] == ["no_such_user"]


@pytest.mark.parametrize("command", ["/join dev", "/who", "/help", "/nick zed", "/leave"])
def test_commands_that_store_nothing_are_acknowledged_at_once(
    connect: Connect, command: str
) -> None:
    # A client that waits for an ack per id is not left waiting (docs/protocol.md).
    alice = connect("alice")
    alice.send(type="message", room="lobby", text=command, id="c1")
    assert alice.expect("ack", id="c1") == {"type": "ack", "id": "c1"}


def test_resume_with_dm_delivers_the_dms_missed_while_away(connect: Connect) -> None:
    alice, bob = connect("alice"), connect("bob")
    bob.send(type="dm", to="alice", text="first", id="d1")
    first = alice.expect("dm")
    session = alice.session
    alice.close()
    bob.send(type="dm", to="alice", text="while you were away", id="d2")
    bob.expect("ack", id="d2")
    back = connect("alice", session=session)
    back.send(type="resume", dm=first["dm"])
    missed = back.expect("dm")
    assert (missed["from"], missed["text"]) == ("bob", "while you were away")
    back.send(type="resume", dm=0, rooms={})
    assert [back.expect("dm")["text"] for _ in range(2)] == ["first", "while you were away"]
    back.send(type="resume", dm=-1, id="bad")
    assert back.expect("error", id="bad")["code"] == "bad_message"


def test_a_message_sent_with_the_close_frame_is_acknowledged_before_the_close_reply(
    chat: RunningChat,
) -> None:
    """A client that sends a message and its close in one write still gets the ack: the
    runtime holds the close reply until the tick's commit has answered the message.
    """
    with WireClient.connect(("127.0.0.1", chat.port), timeout=TIMEOUT) as client:
        assert client.handshake(path="/ws?name=quick").status == 101
        for expected in ("welcome", "presence", "joined"):
            assert json.loads(client.recv_message().data)["type"] == expected
        message = json.dumps({"type": "message", "room": "lobby", "text": "bye", "id": "q1"})
        client.send(encode(0x1, message.encode()) + encode(0x8, close_payload(1000)))
        received = []
        for _ in range(10):
            frame = client.recv_frame()
            if frame.opcode == 0x8:
                break
            received.append(json.loads(frame.payload))
        assert [m["type"] for m in received] == ["message", "ack"]
        assert received[1]["id"] == "q1"
        assert frame.payload[:2] == b"\x03\xe8"
