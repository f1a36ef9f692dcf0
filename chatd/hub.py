"""The hub: rooms, users, sessions, presence, typing, commands and delivery.

One event-loop thread owns all of this state, so nothing here takes a lock. The hub
never parses frames or HTTP: the application hands it decoded text from a connection
and a ``Peer`` to answer through. Writes go to ``Storage`` and are made durable once per
loop tick (``Hub.flush``): only then are they acknowledged to their sender and delivered
to the room, so an acknowledged message is never lost and ``seq`` never goes backwards.

Several nodes (``--bus redis://``): the bus numbers the writes and brings every node's
records back in one order (``apply_bus``), so the same path commits them to this node's
replica and delivers them. Presence is judged for the cluster as a whole: a user's
``online`` is announced when its first session anywhere appears, ``offline`` when its last
one anywhere goes; this node publishes its own changes and mirrors the others'
(``chatd.bus.RemoteNodes``).
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatd import protocol
from chatd.bus import Bus, LocalBus, NodeState, RemoteNodes, snapshot_state
from chatd.metrics import ChatMetrics
from chatd.protocol import (
    DirectMessage,
    History,
    Join,
    Leave,
    Ping,
    ProtocolError,
    Receipt,
    Resume,
    RoomMessage,
    Typing,
    encode,
)
from chatd.storage import Storage, StoredDM, StoredMessage

__all__ = ["LOBBY", "MAX_RECENT_EVENTS", "Hub", "Peer", "RecentEvents", "Session"]

logger = logging.getLogger("chatd.hub")

LOBBY = "lobby"
#: A disconnected session may be resumed (``?session=``) for this long, keeping its rooms.
SESSION_GRACE = 60.0
#: Close code for a connection replaced by a newer one with the same session id.
CLOSE_REPLACED = 4001

HELP_TEXT = (
    "Commands: /msg user text · /join room · /leave · /nick name · /me action · "
    "/shrug [text] · /who · /help"
)
SHRUG = "¯\\_(ツ)_/¯"
#: Notable events (connects, joins, logins, refusals) kept for the admin page.
MAX_RECENT_EVENTS = 50

#: Each parsed client message's ``type`` on the wire, for ``chatd_messages_received_total``.
MESSAGE_TYPES: dict[type[protocol.ClientMessage], str] = {
    Join: "join",
    Leave: "leave",
    RoomMessage: "message",
    DirectMessage: "dm",
    Typing: "typing",
    History: "history",
    Resume: "resume",
    Receipt: "receipt",
    Ping: "ping",
}


class Peer(Protocol):
    """What the hub needs of a connection: ``rfc6455.server.ServerConnection`` fits."""

    def send_text(self, text: str) -> bool: ...

    def send_prepared(self, prepared: Any) -> bool: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


def now_ms() -> int:
    """The server's clock for message timestamps: milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class Session:
    """One client session: a name, the rooms it joined, and its current connection."""

    id: str
    user: str
    peer: Peer | None
    rooms: set[str] = field(default_factory=set)
    detached_at: float | None = None
    #: A logged-in user's session: its name is the account's, fixed.
    authenticated: bool = False
    #: Where what it is sent is counted (the hub's); None: not counted.
    metrics: ChatMetrics | None = field(default=None, repr=False)

    def send(self, message: dict[str, Any]) -> None:
        if self.peer is None:
            return
        sent = self.peer.send_text(encode(message))
        if sent and self.metrics is not None:
            self.metrics.count_message_out(message["type"])


@dataclass(slots=True)
class _Event:
    """One entry of ``RecentEvents``: what happened, to whom, and how many times in a row."""

    ts: int
    kind: str
    user: str | None
    room: str | None
    detail: str | None
    count: int = 1


class RecentEvents:
    """The last ``size`` notable events, for the admin page: a bounded deque, one append
    per event. The same event again at once (a flood of rate-limit refusals from one
    user) bumps the last entry's ``count`` instead of pushing the others out.
    """

    def __init__(self, size: int = MAX_RECENT_EVENTS) -> None:
        self._events: deque[_Event] = deque(maxlen=size)

    def record(
        self,
        kind: str,
        user: str | None = None,
        *,
        room: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Note that ``kind`` happened (to ``user``, in ``room``), now."""
        ts = now_ms()
        if self._events:
            last = self._events[-1]
            if (last.kind, last.user, last.room, last.detail) == (kind, user, room, detail):
                last.count += 1
                last.ts = ts
                return
        self._events.append(_Event(ts, kind, user, room, detail))

    def to_wire(self) -> list[dict[str, Any]]:
        """The events, oldest first, as the ``admin`` message lists them."""
        return [
            {
                "ts": event.ts,
                "kind": event.kind,
                "user": event.user,
                "room": event.room,
                "detail": event.detail,
                "count": event.count,
            }
            for event in self._events
        ]

    def __len__(self) -> int:
        return len(self._events)


@dataclass
class _Waiters:
    """Sessions waiting for the ack of one stored item."""

    sessions: list[Session]


class Hub:
    """All chat state, driven by one thread."""

    def __init__(
        self,
        storage: Storage,
        *,
        prepare: Callable[[Sequence[str]], Any],
        deliver: Callable[[list[Any], Any], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_rooms: int = 0,
        history_page: int = protocol.HISTORY_PAGE,
        metrics: ChatMetrics | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.storage = storage
        #: Numbers the writes and carries events to the other nodes (``chatd.bus``).
        self.bus: Bus = bus if bus is not None else LocalBus(storage)
        #: What the other nodes have said of their users and rooms (empty on one node).
        self.remote = RemoteNodes()
        #: Messages in and out and commit times (``chatd_*`` at ``GET /metrics``).
        self.metrics = metrics if metrics is not None else ChatMetrics()
        #: Encodes text messages once into frames every peer can send
        #: (``rfc6455.server.Server.prepare_many``): a broadcast costs one encoding.
        self.prepare = prepare
        #: Sends prepared frames to many peers (``Server.send_prepared_many``, the
        #: runtime's broadcast fast path); by default, ``send_prepared`` on each.
        self.deliver = deliver or _deliver_each
        #: Rooms one session may be in at once (0: no limit).
        self.max_rooms = max_rooms
        #: Messages sent with ``joined``.
        self.history_page = history_page
        #: Names a guest may not take (the accounts'), set by the application.
        self.reserved: Callable[[str], bool] = lambda name: False
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        #: room name -> the attached sessions in it
        self.rooms: dict[str, set[Session]] = {LOBBY: set()}
        #: user name -> attached sessions
        self.users: dict[str, set[Session]] = {}
        self._waiting: dict[tuple[str, str, int], _Waiters] = {}
        #: Writes handed to the bus and not numbered yet, by (kind, room, sender, client
        #: id): a resend meanwhile waits with the first.
        self._inflight: dict[tuple[str, str, str, str], list[Session]] = {}
        #: user -> when its last session on another node went (a DM may still reach it
        #: there for ``SESSION_GRACE``, as a detached session here would).
        self._left_elsewhere: dict[str, float] = {}
        self.started = time.time()
        self.messages_in = 0
        #: What the admin page lists as recent events; the application adds its own.
        self.events = RecentEvents()
        storage.ensure_room(LOBBY, now_ms())

    # --- sessions ------------------------------------------------------------------------

    def connect(
        self,
        peer: Peer,
        name: str,
        *,
        room: str | None = None,
        session_id: str | None = None,
        authenticated: bool = False,
    ) -> Session:
        """Attach a new connection: resume ``session_id`` if it is known, else a new one.

        ``authenticated``: ``name`` is a logged-in user's, not a guest's pick. Such a user
        may have several sessions (tabs) under the one name, so it gets no suffix, and a
        session id only resumes a session of that same user.
        """
        session = self.sessions.get(session_id) if session_id else None
        if session is not None and (
            session.authenticated != authenticated or (authenticated and session.user != name)
        ):
            session = None  # someone else's session: never taken over by id alone
        # Rooms where others already see this session: a replaced connection is swapped
        # without presence (no "online" or "join" that no "offline" or "leave" preceded).
        present: set[str] = set()
        if session is not None:
            old = session.peer
            if old is not None:
                present = set(session.rooms)
                self._detach(session, announce=False)
                old.close(CLOSE_REPLACED, "replaced by a newer connection")
            if not authenticated and (
                (session.user in self.users and session not in self.users[session.user])
                or self.remote.is_online(session.user)
            ):
                # Someone else took the name while this session was away.
                session.user = self._unique_name(session.user)
        else:
            user = name if authenticated else self._unique_name(name)
            session = Session(
                secrets.token_urlsafe(12),
                user,
                None,
                authenticated=authenticated,
                metrics=self.metrics,
            )
            session.rooms.add(LOBBY)
            self.sessions[session.id] = session
        session.peer = peer
        session.detached_at = None
        first = session.user not in self.users
        first_anywhere = first and not self.remote.is_online(session.user)
        self.users.setdefault(session.user, set()).add(session)
        if first:
            self._publish({"op": "online", "user": session.user})
        self.storage.ensure_user(session.user, now_ms())
        if (
            room is not None
            and protocol.is_valid_room(room)
            and (not self.max_rooms or len(session.rooms) < self.max_rooms)
        ):
            session.rooms.add(room)
        session.send(
            {
                "type": "welcome",
                "protocol": protocol.PROTOCOL_VERSION,
                "session": session.id,
                "user": session.user,
                "rooms": sorted(session.rooms),
                "online": sorted(set(self.users) | self.remote.users()),
                "limits": {
                    "max_text": protocol.MAX_TEXT,
                    "max_name": protocol.MAX_NAME,
                    "history_page": self.history_page,
                },
            }
        )
        self.events.record(
            "connect", session.user, detail="resumed" if session_id == session.id else None
        )
        if first_anywhere and not present:
            self._broadcast_all({"type": "presence", "event": "online", "user": session.user})
        for joined in sorted(session.rooms):
            self._enter(session, joined, announce=joined not in present)
        return session

    def disconnect(self, session: Session) -> None:
        """The connection closed; the session stays resumable for ``SESSION_GRACE``."""
        if session.peer is None:
            return
        self._detach(session, announce=True)
        session.detached_at = self.clock()

    def _detach(self, session: Session, *, announce: bool) -> None:
        user = session.user
        for room in session.rooms:
            members = self.rooms.get(room)
            if members is not None:
                members.discard(session)
                if announce and not self._user_in_room(user, room):
                    self._publish({"op": "leave", "user": user, "room": room})
                    if not self.remote.in_room(user, room):
                        self._announce_leave(user, room)
        sessions = self.users.get(user)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.users[user]
                if announce:
                    self._publish({"op": "offline", "user": user})
                    if not self.remote.is_online(user):
                        self._broadcast_all({"type": "presence", "event": "offline", "user": user})
        session.peer = None

    def _announce_leave(self, user: str, room: str) -> None:
        """``user`` has gone from ``room`` everywhere: its typing stops, then it leaves."""
        self._broadcast_room(room, {"type": "typing", "room": room, "user": user, "active": False})
        self._broadcast_room(
            room, {"type": "presence", "event": "leave", "user": user, "room": room}
        )

    def expire_sessions(self) -> int:
        """Forget sessions detached for longer than ``SESSION_GRACE``; return how many."""
        deadline = self.clock() - SESSION_GRACE
        expired = [
            s
            for s in self.sessions.values()
            if s.detached_at is not None and s.detached_at < deadline
        ]
        for session in expired:
            del self.sessions[session.id]
        for user in [u for u, left in self._left_elsewhere.items() if left < deadline]:
            del self._left_elsewhere[user]
        return len(expired)

    def _unique_name(self, name: str) -> str:
        if not self._online_anywhere(name):
            return name
        for suffix in range(2, 10_000):
            tail = f"-{suffix}"
            candidate = name[: protocol.MAX_NAME - len(tail)] + tail
            if not self._online_anywhere(candidate):
                return candidate
        return secrets.token_hex(8)  # pragma: no cover - 10,000 guests of one name

    def _user_in_room(self, user: str, room: str) -> bool:
        """Whether any attached session of ``user`` on this node is in ``room`` now."""
        return any(s.user == user for s in self.rooms.get(room, ()))

    def _in_room_anywhere(self, user: str, room: str) -> bool:
        return self._user_in_room(user, room) or self.remote.in_room(user, room)

    def _online_anywhere(self, user: str) -> bool:
        return user in self.users or self.remote.is_online(user)

    # --- receiving -------------------------------------------------------------------------

    def receive(self, session: Session, text: str) -> None:
        """Handle one text frame from ``session``; errors go back to it as ``error``."""
        self.messages_in += 1
        try:
            message = protocol.parse_client_message(text)
        except ProtocolError as error:
            self.metrics.count_message_in("invalid")
            session.send(error.to_wire())
            return
        self.metrics.count_message_in(MESSAGE_TYPES.get(type(message), "other"))
        try:
            self._dispatch(session, message)
        except ProtocolError as error:
            session.send(error.to_wire())

    def refuse_binary(self, session: Session) -> None:
        """Binary frames are not part of the protocol."""
        self.metrics.count_message_in("binary")
        session.send(ProtocolError("unsupported", "binary frames are not supported").to_wire())

    def _dispatch(self, session: Session, message: protocol.ClientMessage) -> None:
        if isinstance(message, RoomMessage):
            self._room_message(session, message)
        elif isinstance(message, DirectMessage):
            self._direct_message(session, message.to, message.text, message.id)
        elif isinstance(message, Join):
            self._join(session, message.room, message.id)
        elif isinstance(message, Leave):
            self._leave(session, message.room, message.id)
        elif isinstance(message, Typing):
            self._typing(session, message)
        elif isinstance(message, History):
            self._history(session, message)
        elif isinstance(message, Resume):
            self._resume(session, message)
        elif isinstance(message, Receipt):
            self._receipt(session, message)
        elif isinstance(message, Ping):
            session.send({"type": "pong", "id": message.id, "ts": now_ms()})

    # --- rooms -----------------------------------------------------------------------------

    def _join(self, session: Session, room: str, message_id: str | None = None) -> None:
        if room not in session.rooms and self.max_rooms and len(session.rooms) >= self.max_rooms:
            raise ProtocolError(
                "too_many_rooms", f"at most {self.max_rooms} rooms at once", message_id
            )
        session.rooms.add(room)
        self._enter(session, room)

    def _enter(self, session: Session, room: str, *, announce: bool = True) -> None:
        """Put an attached session in ``room`` and send it ``joined``."""
        if self.storage.ensure_room(room, now_ms()):
            logger.info("room %s created by %s", room, session.user)
        was_here = self._user_in_room(session.user, room)
        was_there = was_here or self.remote.in_room(session.user, room)
        members = self.rooms.setdefault(room, set())
        members.add(session)
        if not was_here:
            self._publish({"op": "join", "user": session.user, "room": room})
        if announce and not was_there:
            self.events.record("join", session.user, room=room)
            self._broadcast_room(
                room,
                {"type": "presence", "event": "join", "user": session.user, "room": room},
                exclude=session,
            )
        recent = self.storage.recent(room, self.history_page) if self.history_page else []
        session.send(
            {
                "type": "joined",
                "room": room,
                "members": self.members(room),
                "messages": [_message_wire(m) for m in recent],
                "last_seq": self.storage.last_seq(room),
            }
        )

    def _leave(self, session: Session, room: str, message_id: str | None) -> None:
        if room not in session.rooms:
            raise ProtocolError("not_in_room", f"you are not in {room}", message_id)
        session.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.discard(session)
        if not self._user_in_room(session.user, room):
            self.events.record("leave", session.user, room=room)
            self._publish({"op": "leave", "user": session.user, "room": room})
            if not self.remote.in_room(session.user, room):
                self._broadcast_room(
                    room,
                    {"type": "presence", "event": "leave", "user": session.user, "room": room},
                )
        session.send({"type": "left", "room": room})

    def members(self, room: str) -> list[str]:
        """Who is in ``room`` on any node, by name."""
        return sorted({s.user for s in self.rooms.get(room, ())} | self.remote.members(room))

    def _require_room(self, session: Session, room: str, message_id: str | None) -> None:
        if room not in session.rooms or session not in self.rooms.get(room, ()):
            raise ProtocolError("not_in_room", f"join {room} first", message_id)

    # --- messages ----------------------------------------------------------------------------

    def _room_message(self, session: Session, message: RoomMessage) -> None:
        self._require_room(session, message.room, message.id)
        text = message.text
        if text.startswith("/") and not text.startswith("//"):
            self._command(session, message)
            return
        if text.startswith("//"):
            text = text[1:]  # "//" escapes a leading slash
        self._store_room_message(session, message.room, text, "text", message.id)

    def _store_room_message(
        self, session: Session, room: str, text: str, kind: str, client_id: str | None
    ) -> None:
        key = None
        if client_id is not None:
            # A resend: with a bus that dedups (Redis), the bus answers with the first
            # seq, which spares a database lookup on every message.
            existing = (
                None
                if self.bus.dedups
                else self.storage.find_message(room, session.user, client_id)
            )
            if existing is not None:
                self._ack_again(session, ("room", room, existing.seq), existing)
                return
            key = ("room", room, session.user, client_id)
            if key in self._inflight:
                self._inflight[key].append(session)
                return
            self._inflight[key] = [session]
        self.bus.write_message(
            room,
            session.user,
            text,
            kind,
            client_id,
            now_ms(),
            lambda result: self._written(("room", room), key, session, client_id, result),
        )

    def _written(
        self,
        where: tuple[str, str],
        key: tuple[str, str, str, str] | None,
        session: Session,
        client_id: str | None,
        result: int | BaseException,
    ) -> None:
        """The bus numbered a write (or failed to): its senders wait for it to be
        committed here, or are acknowledged now if it already was (a resend).
        """
        sessions = self._inflight.pop(key, [session]) if key is not None else [session]
        if isinstance(result, BaseException):
            logger.warning("a write to %s failed: %s", where[1] or "a DM", result)
            refusal = ProtocolError(
                "unavailable", "not stored: the message store is away; send it again", client_id
            ).to_wire()
            for each in sessions:
                each.send(refusal)
            return
        kind, room = where
        item: StoredMessage | StoredDM | None = None
        if kind == "room" and result <= self.storage.visible_seq(room):
            item = self.storage.message_at(room, result)
        elif kind == "dm" and result <= self.storage.visible_dm_id:
            item = self.storage.dm_at(result)
        if item is not None:
            ack = _ack_wire(item)
            for each in sessions:
                each.send(ack)
            return
        waiters = self._waiting.setdefault((kind, room, result), _Waiters([]))
        waiters.sessions.extend(sessions)

    def _direct_message(self, session: Session, to: str, text: str, client_id: str | None) -> None:
        # A resend first: it was stored, so it is acknowledged even if ``to`` has gone since.
        key = None
        if client_id is not None:
            # Looked up even when the bus dedups: a resend of a stored DM is acknowledged
            # though its recipient has gone meanwhile.
            existing = self.storage.find_dm(session.user, client_id)
            if existing is not None:
                self._ack_again(session, ("dm", "", existing.id), existing)
                return
            key = ("dm", "", session.user, client_id)
            if key in self._inflight:
                self._inflight[key].append(session)
                return
        if not self._online_anywhere(to) and not self._known_user(to):
            raise ProtocolError("no_such_user", f"no user called {to}", client_id)
        if key is not None:
            self._inflight[key] = [session]
        self.bus.write_dm(
            session.user,
            to,
            text,
            client_id,
            now_ms(),
            lambda result: self._written(("dm", ""), key, session, client_id, result),
        )

    def _known_user(self, name: str) -> bool:
        """A user a DM may go to though offline: one with a session here (within its
        grace), or one that left another node less than ``SESSION_GRACE`` ago.
        """
        if any(s.user == name for s in self.sessions.values()):
            return True
        left = self._left_elsewhere.get(name)
        return left is not None and self.clock() - left <= SESSION_GRACE

    def _ack_again(
        self, session: Session, key: tuple[str, str, int], item: StoredMessage | StoredDM
    ) -> None:
        """A resent client id: ack it now if committed, else when it is (with the
        original, or alone: a record another node numbered may be queued here unclaimed).
        """
        waiters = self._waiting.get(key)
        if waiters is None and not self._committed(item):
            waiters = self._waiting[key] = _Waiters([])
        if waiters is not None:
            waiters.sessions.append(session)
        else:
            session.send(_ack_wire(item))

    def _committed(self, item: StoredMessage | StoredDM) -> bool:
        if isinstance(item, StoredMessage):
            return item.seq <= self.storage.visible_seq(item.room)
        return item.id <= self.storage.visible_dm_id

    # --- commands ------------------------------------------------------------------------------

    def _command(self, session: Session, message: RoomMessage) -> None:
        name, _, rest = message.text[1:].partition(" ")
        name = name.lower()  # "/ME waves" as the UI reads it
        rest = rest.strip()
        room, client_id = message.room, message.id
        if name == "msg":
            to, _, text = rest.partition(" ")
            if not to or not text.strip():
                raise ProtocolError("bad_message", "usage: /msg user text", client_id)
            if not protocol.is_valid_name(to):
                raise ProtocolError("bad_name", "not a valid user name", client_id)
            self._direct_message(session, to, text.strip(), client_id)
        elif name in {"join", "leave", "nick", "who", "help"}:
            self._immediate_command(session, name, rest, room, client_id)
            if client_id is not None:
                # Nothing is stored: acknowledge at once, so that a client waiting for an
                # ack per id is not left waiting.
                session.send({"type": "ack", "id": client_id})
        elif name == "me":
            if not rest:
                raise ProtocolError("bad_message", "usage: /me action", client_id)
            self._store_room_message(session, room, rest, "me", client_id)
        elif name == "shrug":
            self._store_room_message(session, room, f"{rest} {SHRUG}".strip(), "text", client_id)
        else:
            raise ProtocolError(
                "unknown_command", f"unknown command /{name[:32]}; try /help", client_id
            )

    def _immediate_command(
        self, session: Session, name: str, rest: str, room: str, client_id: str | None
    ) -> None:
        """The commands that change or show state and store nothing."""
        if name == "join":
            if not protocol.is_valid_room(rest):
                raise ProtocolError("bad_room", "usage: /join room", client_id)
            self._join(session, rest, client_id)
        elif name == "leave":
            self._leave(session, room, client_id)
        elif name == "nick":
            self._nick(session, rest, client_id)
        elif name == "who":
            members = ", ".join(self.members(room))
            session.send({"type": "system", "room": room, "text": f"In {room}: {members}"})
        else:
            session.send({"type": "system", "room": room, "text": HELP_TEXT})

    def _nick(self, session: Session, new: str, client_id: str | None) -> None:
        if not protocol.is_valid_name(new):
            raise ProtocolError(
                "bad_name", "a name is 1-50 letters, digits, '-', '_' or '.'", client_id
            )
        old = session.user
        if new == old:
            return
        if session.authenticated:
            raise ProtocolError("name_taken", "a logged-in user's name is the account's", client_id)
        if self._online_anywhere(new) or self.reserved(new):
            raise ProtocolError("name_taken", f"{new} is taken", client_id)
        sessions = self.users.pop(old, set())
        for each in sessions:
            each.user = new
        self.users[new] = sessions
        self.storage.ensure_user(new, now_ms())
        self.events.record("rename", new, detail=f"was {old}")
        self._publish({"op": "rename", "user": new, "old": old})
        self._broadcast_all({"type": "presence", "event": "rename", "user": new, "old": old})

    # --- typing, history, resume, receipts --------------------------------------------------------

    def _typing(self, session: Session, message: Typing) -> None:
        self._require_room(session, message.room, message.id)
        event = {
            "type": "typing",
            "room": message.room,
            "user": session.user,
            "active": message.active,
        }
        self._broadcast_room(message.room, event, exclude_user=session.user)
        self._publish(
            {"op": "typing", "room": message.room, "user": session.user, "active": message.active}
        )

    def _history(self, session: Session, message: History) -> None:
        messages, has_more = self.storage.history(message.room, message.before, message.limit)
        session.send(
            {
                "type": "history",
                "room": message.room,
                "messages": [_message_wire(m) for m in messages],
                "has_more": has_more,
                "id": message.id,
            }
        )

    def _resume(self, session: Session, message: Resume) -> None:
        for room, seq in message.rooms.items():
            if room not in session.rooms or session not in self.rooms.get(room, ()):
                self._join(session, room, message.id)
            messages, has_more = self.storage.after(room, seq, protocol.MAX_RESUME)
            session.send(
                {
                    "type": "history",
                    "room": room,
                    "messages": [_message_wire(m) for m in messages],
                    "has_more": has_more,
                    "id": message.id,
                }
            )
        if message.dm is not None:
            # DMs that arrived while this client was away, as the same ``dm`` frames.
            for dm in self.storage.dms_for(session.user, protocol.MAX_RESUME):
                if dm.id > message.dm:
                    session.send(_dm_wire(dm))

    def _receipt(self, session: Session, message: Receipt) -> None:
        self._require_room(session, message.room, message.id)
        if message.seq > self.storage.last_seq(message.room):
            raise ProtocolError("bad_message", "no such message", message.id)
        if not self.storage.set_receipt(session.user, message.room, message.seq, message.status):
            return
        self._publish(
            {
                "op": "receipt",
                "room": message.room,
                "seq": message.seq,
                "user": session.user,
                "status": message.status,
            }
        )
        self._tell_sender(message.room, message.seq, session.user, message.status)

    def _tell_sender(self, room: str, seq: int, user: str, status: str) -> None:
        """Pass ``user``'s receipt for ``seq`` to the sender's sessions on this node."""
        message = self.storage.message_at(room, seq)
        if message is None or message.sender == user:
            return
        event = {"type": "receipt", "room": room, "seq": seq, "user": user, "status": status}
        for each in self.users.get(message.sender, ()):
            each.send(event)

    # --- delivery ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Commit this tick's writes, then acknowledge and deliver them; return how many.

        Called once per loop tick (``Server.add_tick_callback``): one transaction however
        many messages arrived, and each broadcast frame encoded once for all its readers.
        """
        if not self.storage.pending:
            return 0
        with self.metrics.time_commit():
            committed = self.storage.commit()
        # A room's messages of this tick go out together, in seq order: each member is
        # handed one prepared run of frames, not one per message.
        by_room: dict[str, list[str]] = {}
        for item in committed:
            if isinstance(item, StoredMessage):
                by_room.setdefault(item.room, []).append(encode(_message_wire(item)))
        for room, wires in by_room.items():
            delivered = self._deliver_room(room, self.prepare(wires))
            self.metrics.count_message_out("message", delivered * len(wires))
        for item in committed:
            if isinstance(item, StoredMessage):
                waiters = self._waiting.pop(("room", item.room, item.seq), None)
            else:
                waiters = self._waiting.pop(("dm", "", item.id), None)
                wire = _dm_wire(item)
                recipients = set(self.users.get(item.sender, ())) | set(
                    self.users.get(item.recipient, ())
                )
                for each in recipients:
                    each.send(wire)
            if waiters is not None:
                ack = _ack_wire(item)
                for each in waiters.sessions:
                    each.send(ack)
        return len(committed)

    def _broadcast_room(
        self,
        room: str,
        message: dict[str, Any],
        *,
        exclude: Session | None = None,
        exclude_user: str | None = None,
    ) -> None:
        delivered = self._deliver_room(
            room, self.prepare((encode(message),)), exclude=exclude, exclude_user=exclude_user
        )
        self.metrics.count_message_out(message["type"], delivered)

    def _deliver_room(
        self,
        room: str,
        prepared: Any,
        *,
        exclude: Session | None = None,
        exclude_user: str | None = None,
    ) -> int:
        """Hand ``prepared`` to the members of ``room``; return how many could send."""
        members = self.rooms.get(room)
        if not members:
            return 0
        if exclude is None and exclude_user is None:
            peers = [each.peer for each in members if each.peer is not None]
        else:
            peers = [
                each.peer
                for each in members
                if each.peer is not None and each is not exclude and each.user != exclude_user
            ]
        return self.deliver(peers, prepared)

    def _broadcast_all(self, message: dict[str, Any]) -> None:
        prepared = self.prepare((encode(message),))
        peers = [
            each.peer
            for sessions in self.users.values()
            for each in sessions
            if each.peer is not None
        ]
        self.metrics.count_message_out(message["type"], self.deliver(peers, prepared))

    def announce_shutdown(self) -> None:
        """Tell every connected client that the server is going away (before its 1001),
        so that a client can say so rather than show a dropped connection.
        """
        self._broadcast_all(
            {
                "type": "system",
                "room": None,
                "event": "shutdown",
                "text": "the server is restarting: reconnecting in a moment",
            }
        )

    # --- other nodes ---------------------------------------------------------------------------

    def _publish(self, event: dict[str, Any]) -> None:
        """Tell the other nodes about a change on this one (``LocalBus``: nobody)."""
        event["node"] = self.bus.node
        self.bus.publish(event)

    def snapshot(self) -> dict[str, Any]:
        """This node's users and rooms, as its heartbeat publishes them."""
        return {
            "op": "state",
            "users": sorted(self.users),
            "rooms": {
                room: sorted({s.user for s in members})
                for room, members in self.rooms.items()
                if members
            },
        }

    def heartbeat(self) -> None:
        """Publish this node's snapshot, and forget nodes that stopped publishing theirs:
        their users go offline here (a node killed says nothing; this bounds how long its
        users look online).
        """
        self._publish(self.snapshot())
        for node in self.remote.silent(self.clock()):
            logger.warning("node %s is silent: its users are offline here", node)
            self.events.record("node_lost", detail=node)
            self._remote_update(node, NodeState())
            self.remote.forget(node)

    def leave_cluster(self) -> None:
        """Say goodbye (shutdown): the other nodes drop this node's users at once."""
        self._publish({"op": "bye"})

    def apply_bus(self, items: Sequence[StoredMessage | StoredDM | dict[str, Any]]) -> None:
        """What the bus brought, in its order: records are queued for this tick's commit
        (``flush`` delivers them); events from other nodes are handled now, after the
        records before them have been delivered, so that every node shows one order.
        """
        for item in items:
            if isinstance(item, dict):
                if self.storage.pending:
                    self.flush()
                try:
                    self._remote_event(item)
                except (KeyError, TypeError, ValueError) as error:
                    # Another version's event, or a broken one: skipped, and the records
                    # after it in the batch are still applied.
                    logger.error("bus event skipped: %r (%r)", item, error)
            else:
                try:
                    self.storage.add_replicated(item)
                except ValueError as error:  # the reader fills gaps: a bug if seen
                    logger.error("bus record not applied: %s", error)

    def _remote_event(self, event: dict[str, Any]) -> None:
        node = str(event.get("node", ""))
        op = event.get("op")
        if op == "typing":
            room, user = str(event["room"]), str(event["user"])
            message = {"type": "typing", "room": room, "user": user, "active": event["active"]}
            self._broadcast_room(room, message, exclude_user=user)
            return
        if op == "receipt":
            room, seq = str(event["room"]), int(event["seq"])
            user, status = str(event["user"]), str(event["status"])
            if seq <= self.storage.last_seq(room) and self.storage.set_receipt(
                user, room, seq, status
            ):
                self._tell_sender(room, seq, user, status)
            return
        if op == "bye":
            self._remote_update(node, NodeState())
            self.remote.forget(node)
            return
        user = str(event.get("user", ""))
        if op == "state":
            self._remote_update(node, snapshot_state(event["users"], event["rooms"]))
        elif op in ("online", "offline"):
            self._remote_change(node, {user: op == "online"}, {})
        elif op in ("join", "leave"):
            self._remote_change(node, {}, {(str(event["room"]), user): op == "join"})
        elif op == "rename":
            self._remote_rename(node, str(event["old"]), user)
        else:
            logger.debug("unknown bus event %r from %s", op, node)

    def _remote_rename(self, node: str, old: str, new: str) -> None:
        state = self.remote.nodes.setdefault(node, NodeState())
        state.seen = self.clock()
        if old in state.users:
            state.users.discard(old)
            state.users.add(new)
        for members in state.rooms.values():
            if old in members:
                members.discard(old)
                members.add(new)
        self._broadcast_all({"type": "presence", "event": "rename", "user": new, "old": old})

    def _remote_update(self, node: str, new: NodeState) -> None:
        """Make ``new`` what is known of ``node`` (its snapshot; empty: it is gone), by
        the differences from what was known.
        """
        old = self.remote.nodes.get(node, NodeState())
        users = {user: user in new.users for user in old.users ^ new.users}
        pairs = {
            (room, user): user in new.rooms.get(room, ())
            for room in set(old.rooms) | set(new.rooms)
            for user in old.rooms.get(room, set()) ^ new.rooms.get(room, set())
        }
        self._remote_change(node, users, pairs)

    def _remote_change(
        self, node: str, users: dict[str, bool], pairs: dict[tuple[str, str], bool]
    ) -> None:
        """Apply what ``node`` says changed (user -> online there, (room, user) -> in that
        room there) and tell this node's clients what changed for the cluster as a whole:
        a user online or in a room on no node before, or on none any more. The work is
        the size of the change, not of the node's state.
        """
        state = self.remote.nodes.setdefault(node, NodeState())
        state.seen = self.clock()
        online = {user: self._online_anywhere(user) for user in users}
        present = {pair: self._in_room_anywhere(pair[1], pair[0]) for pair in pairs}
        for user, here in users.items():
            if here and user not in state.users:
                state.users.add(user)
                self.storage.ensure_user(user, now_ms())
            elif not here and user in state.users:
                state.users.discard(user)
                self._left_elsewhere[user] = self.clock()
        for (room, user), here in pairs.items():
            if here:
                state.rooms.setdefault(room, set()).add(user)
                self.storage.ensure_room(room, now_ms())  # listed here too (/api/rooms)
            elif (members := state.rooms.get(room)) is not None:
                members.discard(user)
                if not members:
                    del state.rooms[room]
        for user in sorted(users):
            if not online[user] and self._online_anywhere(user):
                self._broadcast_all({"type": "presence", "event": "online", "user": user})
        for room, user in sorted(pairs):
            now = self._in_room_anywhere(user, room)
            if now and not present[room, user]:
                self._broadcast_room(
                    room, {"type": "presence", "event": "join", "user": user, "room": room}
                )
            elif present[room, user] and not now:
                self._announce_leave(user, room)
        for user in sorted(users):
            if online[user] and not self._online_anywhere(user):
                self._broadcast_all({"type": "presence", "event": "offline", "user": user})

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Figures for ``GET /api/status``."""
        return {
            "uptime": round(time.time() - self.started, 3),
            # Open WebSocket connections, and sessions including those waiting to resume.
            "connections": sum(1 for s in self.sessions.values() if s.peer is not None),
            "sessions": len(self.sessions),
            "users_online": len(self.users),
            "rooms_active": sum(1 for members in self.rooms.values() if members),
            "messages_received": self.messages_in,
            "bus": self.bus.status(),
            "nodes": len(self.remote.nodes) + 1,
            **{f"stored_{key}": value for key, value in self.storage.counts().items()},
        }

    def online_users(self, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` online users by name, for the admin page: each with its
        number of live connections and whether it is an account's (else a guest).
        """
        return [
            {
                "name": name,
                "connections": len(self.users[name]),
                "account": any(s.authenticated for s in self.users[name]),
            }
            for name in heapq.nsmallest(limit, self.users)
        ]

    def active_rooms(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` rooms with the most online users (then by name), for the admin
        page: one pass over the live memberships, whatever the number of stored rooms.
        """
        active = [
            (len({s.user for s in members}), name)
            for name, members in self.rooms.items()
            if members
        ]
        top = heapq.nsmallest(limit, active, key=lambda room: (-room[0], room[1]))
        return [
            {
                "name": name,
                "members": members,
                # Messages are never deleted and seqs have no gaps: the count is the seq.
                "last_seq": self.storage.last_seq(name),
                "messages": self.storage.last_seq(name),
            }
            for members, name in top
        ]


def _deliver_each(peers: list[Any], prepared: Any) -> int:
    """Send prepared frames to each peer in turn (any ``Peer``)."""
    return sum(1 for peer in peers if peer.send_prepared(prepared))


def _message_wire(message: StoredMessage) -> dict[str, Any]:
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


def _dm_wire(dm: StoredDM) -> dict[str, Any]:
    return {
        "type": "dm",
        "dm": dm.id,
        "from": dm.sender,
        "to": dm.recipient,
        "text": dm.text,
        "ts": dm.ts,
        "id": dm.client_id,
    }


def _ack_wire(item: StoredMessage | StoredDM) -> dict[str, Any]:
    if isinstance(item, StoredMessage):
        return {
            "type": "ack",
            "id": item.client_id,
            "room": item.room,
            "seq": item.seq,
            "ts": item.ts,
        }
    return {"type": "ack", "id": item.client_id, "dm": item.id, "ts": item.ts}
