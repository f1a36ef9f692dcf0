// chatd browser UI: plain ES2020 module, no dependencies, no build step.
//
// It speaks docs/protocol.md (version 1) over one WebSocket at /ws. Everything the
// page shows comes from `state` below; the DOM is updated from it by small keyed
// renderers, and every piece of user or server text goes in through `textContent`
// (never innerHTML), so a message is always shown literally.
//
// Before any of that, GET /api/me says how the server admits people (see
// "authentication" below): a guest picks a name, or a user logs in.

// --- constants --------------------------------------------------------------------------

const NAME_RE = /^[A-Za-z0-9._-]{1,50}$/; // protocol: user names
const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/; // protocol: room names
const NAME_KEY = "chatd.name"; // localStorage key for the chosen name
const LOBBY = "lobby";

const PING_EVERY_MS = 10_000; // application heartbeat (browsers cannot see WebSocket pings)
const PONG_TIMEOUT_MS = 5_000; // no pong (or anything) this long after a ping: reconnect
const CONNECT_TIMEOUT_MS = 10_000; // a handshake that takes longer is given up
const BACKOFF_FIRST_MS = 500; // reconnect delays: 0.5 s doubling …
const BACKOFF_MAX_MS = 15_000; // … up to 15 s, each with jitter
const STABLE_AFTER_MS = 10_000; // a connection up this long resets the backoff
const TYPING_SEND_EVERY_MS = 2_000; // `typing` {active:true} at most this often
const TYPING_SHOW_MS = 5_000; // a `typing` not refreshed expires (as on the server)
const RECEIPT_DEBOUNCE_MS = 800;
const NEAR_BOTTOM_PX = 80; // "at the bottom" for auto-scrolling
const NEAR_TOP_PX = 60; // scrolled to the top: load older messages
const CLOSE_REPLACED = 4001; // server: this session was taken over by a newer connection
const CLOSE_TOKEN_EXPIRED = 4401; // server: the login token expired, log in again
const REQUEST_TIMEOUT_MS = 10_000; // an API request (/api/me, login, logout) is given up
const PASSWORD_MIN = 8; // registration: the server's password length rule, in characters
const PASSWORD_MAX = 1024;

// --- state ------------------------------------------------------------------------------

/** All the page knows. Exposed as `window.chatd.state` for end-to-end tests. */
const state = {
  view: null, // the screen shown: null (asking /api/me) | boot | name | login | chat
  auth: {
    mode: null, // "open" (a guest picks a name) or "required" (log in), from /api/me
    user: null, // who the login cookie is for (required mode)
    expires: 0, // when that login ends (unix seconds; the server decides, this informs)
    registration: false, // the server lets people create an account
    registering: false, // the login form creates an account instead of logging in
    busy: false, // a login, register or logout request is in flight
  },
  name: null, // the name asked for (kept in localStorage in open mode)
  me: null, // the name the server gave us (`welcome.user`; may carry a suffix)
  session: null, // `welcome.session`, sent back as ?session= to resume
  limits: { max_text: 4000, max_name: 50, history_page: 50 },
  rooms: new Map(), // room name -> Room
  dms: new Map(), // peer name -> DM thread
  online: new Set(), // everyone online, from presence online/offline
  lastDm: 0, // the newest DM id received: what `resume` asks after
  current: null, // key of the shown conversation: "room:lobby" or "dm:bob"
  lastRoom: LOBBY, // the room commands typed in a DM thread apply to
  outbox: [], // outgoing messages until acknowledged (see "sending")
  switchOnJoin: null, // a room the user asked to join: show it when `joined` arrives
  conn: {
    ws: null,
    status: "idle", // idle | connecting | open | closed | replaced
    attempt: 0, // reconnect attempts since the last stable connection
    everOpened: false,
    retryTimer: 0,
    connectTimer: 0,
    stableTimer: 0,
    pingTimer: 0,
    watchdogTimer: 0,
    lastReceived: 0, // performance.now() of the last frame received
    heartbeatLost: false,
  },
};

let localCounter = 0; // keys for local lines and request ids

function newRoom(name) {
  return {
    kind: "room",
    key: `room:${name}`,
    name,
    messages: new Map(), // seq -> message (deduplicated by seq)
    synced: 0, // every seq up to this one has been received: what `resume` asks after
    initialized: false, // a first `joined` arrived
    hasMoreBefore: false, // older messages exist on the server
    olderRequest: null, // id of the `history` request in flight
    unread: 0,
    members: new Set(),
    typing: new Map(), // user -> expiry timer
    receipts: new Map(), // user -> highest seq they have seen (relayed to us as sender)
    lastReceiptSent: 0,
    locals: [], // system and error lines: {key, anchor, kind, text, ts}
    elements: new Map(), // render cache: item key -> element
    scroll: null, // saved scroll position while another conversation is shown
    seen: null, // the "Seen by …" line shown
  };
}

function newThread(peer) {
  return {
    kind: "dm",
    key: `dm:${peer}`,
    name: peer,
    messages: new Map(), // dm id -> message
    open: true, // listed in the sidebar (Close hides it until the next message)
    unread: 0,
    locals: [],
    elements: new Map(),
    scroll: null,
  };
}

// --- small helpers ----------------------------------------------------------------------

/** Create an element with text content (never HTML) and attributes. */
function el(tag, { text, cls, attrs, data } = {}, children = []) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const [k, v] of Object.entries(data || {})) node.dataset[k] = v;
  for (const child of children) if (child) node.append(child);
  return node;
}

/** A UUID for client message ids; `crypto.randomUUID` needs a secure context. */
function uuid() {
  if (globalThis.crypto?.randomUUID) {
    try {
      return crypto.randomUUID();
    } catch {
      /* insecure context: fall through */
    }
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  hour12: false,
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** <time> in local HH:MM, the full date in its title. */
function timeElement(ts) {
  const date = new Date(ts);
  return el("time", {
    cls: "msg-time",
    text: timeFormat.format(date),
    attrs: { datetime: date.toISOString(), title: fullFormat.format(date) },
  });
}

/** Python's str.partition(" "): the server splits commands this way. */
function partition(text, sep = " ") {
  const at = text.indexOf(sep);
  return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + sep.length)];
}

function codePoints(text) {
  return [...text].length; // the server counts characters, not UTF-16 units
}

function loadName() {
  try {
    return localStorage.getItem(NAME_KEY);
  } catch {
    return null; // storage disabled
  }
}

function saveName(name) {
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    /* storage disabled: the name is only kept for this page */
  }
}

// --- conversations ----------------------------------------------------------------------

function currentConv() {
  return convByKey(state.current);
}

function convByKey(key) {
  if (!key) return null;
  const [kind, name] = partition(key, ":");
  return (kind === "room" ? state.rooms.get(name) : state.dms.get(name)) || null;
}

function ensureRoom(name) {
  let room = state.rooms.get(name);
  if (!room) {
    room = newRoom(name);
    state.rooms.set(name, room);
  }
  return room;
}

function ensureThread(peer) {
  let thread = state.dms.get(peer);
  if (!thread) {
    thread = newThread(peer);
    state.dms.set(peer, thread);
  }
  thread.open = true;
  return thread;
}

/** Conversations in sidebar order: rooms, then open DM threads (Alt+↑/↓ walks this). */
function conversationOrder() {
  const rooms = [...state.rooms.values()].sort((a, b) => a.name.localeCompare(b.name));
  const dms = [...state.dms.values()]
    .filter((t) => t.open)
    .sort((a, b) => a.name.localeCompare(b.name));
  return [...rooms, ...dms];
}

function show(key, { focus = false } = {}) {
  const previous = currentConv();
  if (previous && previous.key !== key) previous.scroll = saveScroll();
  const conv = convByKey(key);
  state.current = conv ? conv.key : null;
  if (conv) {
    conv.unread = 0;
    if (conv.kind === "room") state.lastRoom = conv.name;
    else conv.open = true;
  }
  stopTyping();
  render({ switched: true });
  scheduleReceipt();
  closeSidebar({ restoreFocus: false });
  if (focus) ui.composer.focus();
}

/** After leaving or closing: the last room, else any room, else a DM, else nothing. */
function showFallback() {
  const order = conversationOrder();
  const target =
    state.rooms.get(state.lastRoom) || order.find((c) => c.kind === "room") || order[0];
  show(target ? target.key : null);
}

function switchBy(step) {
  const order = conversationOrder();
  if (order.length === 0) return;
  const at = order.findIndex((c) => c.key === state.current);
  const next = at < 0 ? order[0] : order[(at + step + order.length) % order.length];
  show(next.key);
}

/** A system or error line shown inline in a conversation (not a chat message). */
function addLocal(conv, kind, text) {
  if (!conv) return;
  conv.locals.push({
    key: `l${++localCounter}`,
    anchor: newestKey(conv), // sorted after the newest message it followed
    kind,
    text,
    ts: Date.now(),
  });
  if (conv.locals.length > 200) conv.locals.splice(0, conv.locals.length - 200);
  render();
}

function newestKey(conv) {
  let max = 0;
  for (const key of conv.messages.keys()) if (key > max) max = key;
  return max;
}

function oldestKey(conv) {
  let min = Infinity;
  for (const key of conv.messages.keys()) if (key < min) min = key;
  return min === Infinity ? 0 : min;
}

/** Errors go inline in the current conversation and to the assertive live region. */
function showError(text, conv = currentConv()) {
  addLocal(conv, "error", text);
  announce(text);
}

function announce(text) {
  // Clear first so that the same text twice is announced twice.
  ui.alerts.textContent = "";
  setTimeout(() => {
    ui.alerts.textContent = text;
  }, 50);
}

// --- connection -------------------------------------------------------------------------

function wsUrl() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  // With a login the server takes the name from the token (the cookie goes with the
  // upgrade by itself); a guest asks for one.
  if (state.auth.mode !== "required") url.searchParams.set("name", state.name);
  // Reconnecting: the server replaces that session and keeps its rooms (protocol: session).
  if (state.session) url.searchParams.set("session", state.session);
  return url.href;
}

function connect() {
  const conn = state.conn;
  clearTimeout(conn.retryTimer);
  if (conn.ws || state.view !== "chat") return;
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch {
    disconnected(1006); // e.g. a port the browser blocks: keep trying with backoff
    return;
  }
  conn.ws = ws;
  conn.status = "connecting";
  conn.connectTimer = setTimeout(() => {
    if (conn.ws === ws) abandon("connection timed out");
  }, CONNECT_TIMEOUT_MS);
  // A socket refused before the upgrade closes with 1006 and nothing else to tell it
  // from a network failure; with a login, that is when /api/me is asked why.
  let upgraded = false;
  ws.onopen = () => {
    upgraded = true;
  };
  // Every handler checks that `ws` is still the current socket: an abandoned socket
  // may still report events afterwards.
  ws.onmessage = (event) => {
    if (conn.ws !== ws) return;
    conn.lastReceived = performance.now();
    receive(event.data);
  };
  ws.onclose = (event) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    disconnected(event.code, { upgraded });
  };
  ws.onerror = () => {
    /* a close event follows */
  };
  renderConnection();
}

/** Give up on the current socket now (heartbeat or handshake timeout) and reconnect. */
function abandon(reason) {
  const ws = state.conn.ws;
  if (!ws) return;
  state.conn.ws = null;
  try {
    ws.close(4000, reason); // 4000-4999: application codes a client may send
  } catch {
    /* already closing */
  }
  disconnected(1006);
}

function disconnected(code, { upgraded = true } = {}) {
  const conn = state.conn;
  releaseConnection();
  if (code === CLOSE_REPLACED) {
    // The same session was opened elsewhere: reconnecting would take it back, so ask.
    conn.status = "replaced";
  } else if (code === CLOSE_TOKEN_EXPIRED) {
    conn.status = "closed";
    loginExpired();
  } else if (loginMayHaveEnded(upgraded)) {
    conn.status = "closed";
    recheckLogin();
  } else {
    conn.status = "closed";
    scheduleReconnect();
  }
  render();
}

/** What a socket leaves behind when it goes: its timers, and requests it cannot answer. */
function releaseConnection() {
  const conn = state.conn;
  clearTimeout(conn.retryTimer);
  clearTimeout(conn.connectTimer);
  clearTimeout(conn.stableTimer);
  clearInterval(conn.pingTimer);
  clearTimeout(conn.watchdogTimer);
  clearAllTyping();
  for (const room of state.rooms.values()) room.olderRequest = null; // never answered now
  // Sent but not acknowledged: resent with the same id after reconnecting.
  for (const entry of state.outbox) if (entry.status === "sent") entry.status = "queued";
}

/** Close the socket for good (logout, expired login): no reconnect follows. */
function stopConnection(reason) {
  const conn = state.conn;
  const ws = conn.ws;
  conn.ws = null; // its late events are ignored: every handler checks conn.ws
  try {
    ws?.close(1000, reason);
  } catch {
    /* already closing */
  }
  releaseConnection();
  conn.status = "idle";
}

function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
}

function scheduleReconnect() {
  const conn = state.conn;
  clearTimeout(conn.retryTimer);
  const delay = backoffDelay(conn.attempt);
  conn.attempt += 1;
  conn.retryTimer = setTimeout(connect, delay);
}

/** Reconnect at once (the `online` event, the "Reconnect now" button). */
function reconnectNow() {
  const conn = state.conn;
  if (state.view !== "chat") return;
  if (conn.ws && conn.status === "open") {
    probe(); // the socket may be stale after a network change: let the watchdog decide
    return;
  }
  if (conn.ws) return; // a handshake is in progress
  clearTimeout(conn.retryTimer);
  connect();
}

function sendFrame(frame) {
  const ws = state.conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function isOpen() {
  return state.conn.status === "open" && state.conn.ws?.readyState === WebSocket.OPEN;
}

// Heartbeat: browsers cannot see WebSocket pings, so send the protocol's `ping` every
// 10 s; if no frame at all arrives within 5 s of it, the connection is dead.
function startHeartbeat() {
  clearInterval(state.conn.pingTimer);
  state.conn.pingTimer = setInterval(probe, PING_EVERY_MS);
}

function probe() {
  const conn = state.conn;
  const sentAt = performance.now();
  if (!sendFrame({ type: "ping", id: `ping-${++localCounter}` })) return;
  clearTimeout(conn.watchdogTimer);
  conn.watchdogTimer = setTimeout(() => {
    if (conn.lastReceived < sentAt && conn.status === "open") {
      conn.heartbeatLost = true; // named in the banner until the next `welcome`
      abandon("heartbeat timeout");
    }
  }, PONG_TIMEOUT_MS);
}

// --- receiving --------------------------------------------------------------------------

const handlers = {
  welcome: onWelcome,
  joined: onJoined,
  left: onLeft,
  message: onMessage,
  ack: onAck,
  dm: onDm,
  presence: onPresence,
  typing: onTyping,
  receipt: onReceipt,
  history: onHistory,
  pong: () => {}, // any frame feeds the watchdog; nothing else to do
  error: onError,
  system: onSystem,
};

function receive(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return; // the server only sends JSON; ignore anything else
  }
  const handler = frame && handlers[frame.type];
  if (handler) handler(frame); // unknown types are ignored (forward compatibility)
}

function onWelcome(frame) {
  const conn = state.conn;
  clearTimeout(conn.connectTimer);
  state.session = frame.session;
  state.me = frame.user;
  Object.assign(state.limits, frame.limits || {});
  ui.composer.maxLength = state.limits.max_text;
  conn.status = "open";
  conn.everOpened = true;
  conn.heartbeatLost = false;
  // Only a connection that stays up resets the backoff (no tight reconnect loops).
  conn.stableTimer = setTimeout(() => {
    conn.attempt = 0;
  }, STABLE_AFTER_MS);
  startHeartbeat();

  // Presence missed while away is unknown: rebuild from here (members arrive in `joined`).
  state.online = new Set([state.me, ...(frame.online || [])]);

  // Resume every room we already have, after the last seq we hold without a gap: the
  // server answers with one `history` per room holding everything after it.
  const resume = {};
  for (const room of state.rooms.values()) {
    if (room.initialized) resume[room.name] = room.synced;
    else if (!(frame.rooms || []).includes(room.name)) sendFrame({ type: "join", room: room.name });
  }
  // `dm`: the DMs after the newest one we hold (all recent ones on the first connect)
  // come back as `dm` frames; threads dedupe them by id.
  sendFrame({ type: "resume", rooms: resume, dm: state.lastDm, id: `resume-${++localCounter}` });
  flushOutbox();
  render();
}

function onJoined(frame) {
  const room = ensureRoom(frame.room);
  const lastSeq = frame.last_seq ?? 0;
  if (room.initialized && lastSeq < room.synced) {
    // The server's history is older than ours (its database was reset): start over.
    Object.assign(room, newRoom(room.name), { unread: room.unread });
  }
  room.members = new Set(frame.members || []);
  for (const member of room.members) state.online.add(member);
  if (!room.initialized) {
    // First join: these are the latest messages; older ones come on scroll.
    addMessages(room, frame.messages || [], { countUnread: false });
    room.synced = lastSeq;
    room.initialized = true;
    room.hasMoreBefore = oldestKey(room) > 1;
  } else {
    // Rejoined after a reconnect: `resume` (already sent) fills any gap before these.
    addMessages(room, frame.messages || [], { countUnread: true });
  }
  const requested = state.switchOnJoin === room.name; // the user asked for this room
  if (requested || !state.current) {
    state.switchOnJoin = null;
    show(room.key, { focus: requested || document.activeElement === ui.composer });
    return;
  }
  render();
}

function onLeft(frame) {
  const room = state.rooms.get(frame.room);
  if (!room) return;
  for (const timer of room.typing.values()) clearTimeout(timer);
  state.rooms.delete(frame.room);
  state.outbox = state.outbox.filter((e) => e.convKey !== room.key);
  if (state.lastRoom === frame.room) state.lastRoom = [...state.rooms.keys()][0] || LOBBY;
  if (state.current === room.key) showFallback();
  else render();
}

function onMessage(frame) {
  const room = state.rooms.get(frame.room);
  if (!room) return;
  addMessages(room, [frame], { countUnread: true });
  clearTypingOf(room, frame.from);
  render();
  scheduleReceipt();
}

/**
 * Merge room messages: deduplicated by seq, kept sorted by seq when rendered. A message
 * carrying the client id of one of ours replaces its pending entry.
 */
function addMessages(room, messages, { countUnread }) {
  const sorted = [...messages].sort((a, b) => a.seq - b.seq);
  for (const msg of sorted) {
    if (typeof msg.seq !== "number") continue;
    if (msg.id) settleOutbox(msg.id);
    if (room.messages.has(msg.seq)) continue;
    room.messages.set(msg.seq, msg);
    const isNew = msg.seq > room.synced;
    if (msg.seq === room.synced + 1) room.synced = msg.seq;
    if (countUnread && isNew && msg.from !== state.me && state.current !== room.key) {
      room.unread += 1;
    }
  }
  // Walk forward over messages that arrived before the gap below them was filled.
  while (room.messages.has(room.synced + 1)) room.synced += 1;
}

function onHistory(frame) {
  const room = state.rooms.get(frame.room);
  if (!room) return;
  const messages = frame.messages || [];
  if (frame.id && frame.id === room.olderRequest) {
    // Scrolling back: older messages, prepended with the scroll position kept.
    room.olderRequest = null;
    const before = room.messages.size;
    addMessages(room, messages, { countUnread: false });
    // (nothing new would ask again forever)
    room.hasMoreBefore = Boolean(frame.has_more) && room.messages.size > before;
    render({ prepended: true });
    return;
  }
  if (!String(frame.id || "").startsWith("resume-")) {
    addMessages(room, messages, { countUnread: false }); // an answer we no longer wait for
    render();
    return;
  }
  // An answer to `resume`: every message after the seq we sent, oldest first.
  addMessages(room, messages, { countUnread: true });
  if (messages.length > 0) room.synced = Math.max(room.synced, messages[messages.length - 1].seq);
  while (room.messages.has(room.synced + 1)) room.synced += 1;
  if (frame.has_more) {
    // At most 1,000 per answer: ask for the rest, so nothing is left out.
    sendFrame({
      type: "resume",
      rooms: { [room.name]: room.synced },
      id: `resume-${++localCounter}`,
    });
  }
  render();
  scheduleReceipt();
}

function requestOlder(room) {
  if (!room || room.kind !== "room" || !room.hasMoreBefore || room.olderRequest) return;
  const id = `history-${++localCounter}`;
  const before = oldestKey(room);
  if (
    !sendFrame({ type: "history", room: room.name, before, limit: state.limits.history_page, id })
  ) {
    return;
  }
  room.olderRequest = id;
  renderHistoryControls(room);
}

function onDm(frame) {
  if (frame.dm > state.lastDm) state.lastDm = frame.dm;
  // Both directions arrive here: our own DMs come back to all of our sessions.
  const peer = frame.from === state.me ? frame.to : frame.from;
  const thread = ensureThread(peer);
  if (frame.id) settleOutbox(frame.id);
  if (!thread.messages.has(frame.dm)) {
    thread.messages.set(frame.dm, frame);
    if (frame.from !== state.me && state.current !== thread.key) thread.unread += 1;
  }
  render();
}

function onAck(frame) {
  const entry = state.outbox.find((e) => e.id === frame.id);
  if (!entry) return;
  // The room echo (same id) usually comes first; if not, keep the entry as "sent"
  // until the message itself arrives, so it never blinks out of the list.
  const conv = convByKey(entry.convKey);
  const key = frame.room !== undefined ? frame.seq : frame.dm;
  if (conv && conv.messages.has(key)) settleOutbox(entry.id);
  else entry.status = "acked";
  render();
}

function settleOutbox(id) {
  const at = state.outbox.findIndex((e) => e.id === id);
  if (at >= 0) state.outbox.splice(at, 1);
}

function onPresence(frame) {
  const { event, user } = frame;
  if (event === "online") state.online.add(user);
  else if (event === "offline") state.online.delete(user);
  else if (event === "join" || event === "leave") {
    const room = state.rooms.get(frame.room);
    if (room && event === "join") {
      room.members.add(user);
      state.online.add(user);
    } else if (room) {
      room.members.delete(user);
      clearTypingOf(room, user);
    }
  } else if (event === "rename") {
    rename(frame.old, user);
  }
  render();
}

function rename(old, user) {
  if (state.online.delete(old)) state.online.add(user);
  for (const room of state.rooms.values()) {
    if (room.receipts.has(old)) {
      room.receipts.set(user, Math.max(room.receipts.get(old), room.receipts.get(user) || 0));
      room.receipts.delete(old);
    }
    if (room.members.delete(old)) {
      room.members.add(user);
      clearTypingOf(room, old);
      if (old !== state.me) addLocal(room, "system", `${old} is now known as ${user}`);
    }
  }
  const thread = state.dms.get(old);
  if (thread && !state.dms.has(user)) {
    state.dms.delete(old);
    Object.assign(thread, { name: user, key: `dm:${user}` });
    state.dms.set(user, thread);
    if (state.current === `dm:${old}`) state.current = thread.key;
    for (const entry of state.outbox) if (entry.convKey === `dm:${old}`) entry.convKey = thread.key;
  }
  if (old === state.me) {
    state.me = user;
    state.name = user;
    if (state.auth.mode !== "required") saveName(user);
    addLocal(currentConv(), "system", `You are now known as ${user}`);
  }
}

function onTyping(frame) {
  const room = state.rooms.get(frame.room);
  if (!room || frame.user === state.me) return;
  clearTypingOf(room, frame.user);
  if (frame.active) {
    // Expires by itself unless refreshed (the sender repeats it every 2 s).
    const timer = setTimeout(() => {
      room.typing.delete(frame.user);
      renderTyping();
    }, TYPING_SHOW_MS);
    room.typing.set(frame.user, timer);
  }
  renderTyping();
}

function clearTypingOf(room, user) {
  const timer = room.typing.get(user);
  if (timer === undefined) return;
  clearTimeout(timer);
  room.typing.delete(user);
  renderTyping();
}

function clearAllTyping() {
  for (const room of state.rooms.values()) {
    for (const timer of room.typing.values()) clearTimeout(timer);
    room.typing.clear();
  }
}

function onReceipt(frame) {
  // Relayed to us because we sent message `seq`: keep the highest seq per reader.
  const room = state.rooms.get(frame.room);
  if (!room || frame.status !== "seen") return;
  if ((room.receipts.get(frame.user) || 0) < frame.seq) room.receipts.set(frame.user, frame.seq);
  render();
}

function onError(frame) {
  const entry = frame.id ? state.outbox.find((e) => e.id === frame.id) : null;
  const text = frame.message || frame.code || "error";
  if (entry) {
    entry.status = "failed";
    entry.error = text;
  }
  for (const room of state.rooms.values()) {
    if (room.olderRequest && room.olderRequest === frame.id) room.olderRequest = null;
  }
  const conv = (entry && convByKey(entry.convKey)) || currentConv();
  showError(`Error: ${text}`, conv);
}

function onSystem(frame) {
  const conv = (frame.room && state.rooms.get(frame.room)) || currentConv();
  addLocal(conv, "system", frame.text || "");
}

// --- sending ----------------------------------------------------------------------------
//
// Every chat message gets a client id and goes into `state.outbox` first. It is shown
// as pending until the server acknowledges it (and echoes it with the same id). If the
// socket is down it waits, and after a reconnect it is sent again with the SAME id: the
// server stores an id only once and answers a repeat with the original ack.

function submitEntry(entry) {
  state.outbox.push(entry);
  if (isOpen()) transmit(entry);
  render();
}

function transmit(entry) {
  if (!sendFrame(entry.frame)) return;
  entry.status = "sent";
  if (!entry.expectsAck) settleOutbox(entry.id); // commands like /join: nothing to wait for
}

function flushOutbox() {
  for (const entry of [...state.outbox]) {
    if (entry.status === "queued" || entry.status === "sent") transmit(entry);
  }
}

function retry(id) {
  const entry = state.outbox.find((e) => e.id === id);
  if (!entry) return;
  entry.status = "queued";
  entry.error = null;
  if (isOpen()) transmit(entry);
  render();
}

function discard(id) {
  settleOutbox(id);
  render();
  ui.composer.focus();
}

/** Send what the user typed to the shown conversation (Enter, the Send button, chatd.send). */
function send(rawText) {
  const text = rawText.replace(/\s+$/, "");
  if (!text.trim()) return false;
  if (codePoints(text) > state.limits.max_text) {
    showError(`A message is at most ${state.limits.max_text} characters.`);
    return false;
  }
  const conv = currentConv();
  const isCommand = text.startsWith("/") && !text.startsWith("//"); // "//" escapes a slash
  if (isCommand) return sendCommand(text, conv);
  if (!conv) {
    showError("Join a room first: /join room");
    return false;
  }
  const id = uuid();
  const frame =
    conv.kind === "room"
      ? { type: "message", room: conv.name, text, id }
      : { type: "dm", to: conv.name, text, id };
  const shown = text.startsWith("//") && conv.kind === "room" ? text.slice(1) : text;
  submitEntry(newEntry(id, frame, conv, shown));
  stopTyping();
  return true;
}

function newEntry(id, frame, conv, text, { kind = "text", expectsAck = true } = {}) {
  return {
    id,
    frame,
    convKey: conv?.key ?? null,
    text,
    kind,
    expectsAck,
    status: "queued",
    error: null,
  };
}

/**
 * A `/` command is sent as `message` text and interpreted by the server (protocol:
 * "Commands"). In a DM thread it applies to the last room shown. The client only looks at
 * it to show a pending entry where the result will appear.
 */
function sendCommand(text, conv) {
  const [head, rest] = partition(text.slice(1));
  const name = head.toLowerCase();
  const args = rest.trim();
  const room = conv?.kind === "room" ? conv : state.rooms.get(state.lastRoom);
  if (!room || !room.initialized) {
    // Commands need a room on the server; without one only /join can be done here.
    if (name === "join" && ROOM_RE.test(args)) return join(args);
    if (name === "msg") return sendCommandDm(args, conv);
    showError("Join a room first: /join room", conv);
    return false;
  }
  const id = uuid();
  const frame = { type: "message", room: room.name, text, id };
  if (name === "leave" && conv?.kind !== "room") {
    showError("/leave works in a room; Escape closes a direct message.", conv);
    return false;
  }
  if (name === "msg") {
    const [to, body] = partition(args);
    if (NAME_RE.test(to) && body.trim()) {
      // The reply is a `dm` carrying this id: show it pending in that thread.
      const thread = ensureThread(to);
      submitEntry(newEntry(id, frame, thread, body.trim()));
      show(thread.key, { focus: true });
      return true;
    }
  } else if (name === "me" && args) {
    submitEntry(newEntry(id, frame, room, args, { kind: "me" }));
    return true;
  } else if (name === "shrug") {
    submitEntry(newEntry(id, frame, room, `${args} ¯\\_(ツ)_/¯`.trim()));
    return true;
  } else if (name === "join" && ROOM_RE.test(args)) {
    state.switchOnJoin = args; // show the room once `joined` arrives
  }
  // Anything else is answered by `joined`, `left`, `presence`, `system` or `error`.
  submitEntry(newEntry(id, frame, conv, text, { expectsAck: false }));
  return true;
}

function sendCommandDm(args, conv) {
  const [to, body] = partition(args);
  if (!NAME_RE.test(to) || !body.trim()) {
    showError("Usage: /msg user text", conv);
    return false;
  }
  return openDm(to, body.trim());
}

/** Open (and show) a DM thread; with text, send it as a `dm`. */
function openDm(peer, text) {
  const thread = ensureThread(peer);
  if (text) {
    const id = uuid();
    submitEntry(newEntry(id, { type: "dm", to: peer, text, id }, thread, text));
  }
  show(thread.key, { focus: true });
  return true;
}

/** Join a room (the join form, `/join` without a room, `chatd.join`). */
function join(name) {
  if (!ROOM_RE.test(name)) return false;
  const room = state.rooms.get(name);
  if (room?.initialized) {
    show(room.key, { focus: true });
    return true;
  }
  state.switchOnJoin = name;
  if (!sendFrame({ type: "join", room: name, id: `join-${++localCounter}` })) {
    ensureRoom(name); // joined after the reconnect (see onWelcome)
    render();
  }
  return true;
}

function leave(room) {
  if (!room || !sendFrame({ type: "leave", room: room.name, id: `leave-${++localCounter}` })) {
    if (room) showError("You are offline: leave the room once you are back.", room);
  }
}

// Typing: {active:true} at most every 2 s while typing, {active:false} on send and blur.
const typingState = { room: null, lastSent: 0 };

function noteTyping() {
  const conv = currentConv();
  const text = ui.composer.value;
  if (!conv || conv.kind !== "room" || !text.trim() || text.startsWith("/")) {
    if (!text.trim()) stopTyping();
    return;
  }
  const now = performance.now();
  if (typingState.room === conv.name && now - typingState.lastSent < TYPING_SEND_EVERY_MS) return;
  if (sendFrame({ type: "typing", room: conv.name, active: true })) {
    typingState.room = conv.name;
    typingState.lastSent = now;
  }
}

function stopTyping() {
  if (typingState.room && state.rooms.get(typingState.room)?.initialized) {
    sendFrame({ type: "typing", room: typingState.room, active: false });
  }
  typingState.room = null;
  typingState.lastSent = 0;
}

// Receipts: "seen" for the newest message of the shown room while the page is visible.
let receiptTimer = 0;

function scheduleReceipt() {
  clearTimeout(receiptTimer);
  receiptTimer = setTimeout(sendReceipt, RECEIPT_DEBOUNCE_MS);
}

function sendReceipt() {
  const conv = currentConv();
  if (!conv || conv.kind !== "room" || document.visibilityState !== "visible") return;
  const seq = newestKey(conv);
  if (seq <= conv.lastReceiptSent) return;
  if (sendFrame({ type: "receipt", room: conv.name, seq, status: "seen" }))
    conv.lastReceiptSent = seq;
}

// --- rendering --------------------------------------------------------------------------

const ui = {};

/** Every element with an id, as `ui.camelCaseId` ("name-input" -> ui.nameInput). */
function bindUi() {
  for (const node of document.querySelectorAll("[id]")) {
    ui[node.id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = node;
  }
}

let renderQueued = false;
let renderFlags = {};

/** Coalesce renders: one per task, however many frames a task handled. */
function render(flags = {}) {
  renderFlags = {
    switched: renderFlags.switched || flags.switched,
    prepended: renderFlags.prepended || flags.prepended,
    toBottom: renderFlags.toBottom || flags.toBottom,
  };
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    const current = renderFlags;
    renderFlags = {};
    renderAll(current);
  });
}

function renderAll(flags) {
  renderConnection();
  renderSidebar();
  renderHeader();
  renderLog(flags);
  renderTyping();
  renderTitle();
}

/**
 * Keyed list update: `items` in order, `build(item)` makes an element once, `update`
 * refreshes it. Existing elements are moved, not recreated, so focus and screen-reader
 * positions survive, and the log only announces what was really added.
 */
function syncChildren(parent, items, cache, keyOf, build, update) {
  const wanted = new Set();
  let cursor = parent.firstChild;
  for (const item of items) {
    const key = keyOf(item);
    let node = cache.get(key);
    if (!node) {
      node = build(item);
      cache.set(key, node);
    } else if (update) {
      const fresh = update(node, item); // an update may return a replacement
      if (fresh && fresh !== node) {
        if (cursor === node) cursor = fresh;
        if (node.parentNode === parent) node.replaceWith(fresh);
        cache.set(key, fresh);
        node = fresh;
      }
    }
    wanted.add(key);
    if (node === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(node, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
  for (const key of cache.keys()) if (!wanted.has(key)) cache.delete(key);
}

function renderConnection() {
  const { status, attempt, heartbeatLost } = state.conn;
  const offline = navigator.onLine === false;
  const label =
    status === "open" ? "Connected" : status === "replaced" ? "Disconnected" : "Connecting…";
  ui.connState.textContent = label;
  ui.connState.dataset.state = status;
  ui.meName.textContent = state.me || state.name || "";

  let text = "";
  let button = "Reconnect now";
  const queued = state.outbox.filter((e) => e.expectsAck && e.status === "queued").length;
  const waiting =
    queued > 0 ? ` ${queued} message${queued === 1 ? "" : "s"} will be sent then.` : "";
  if (status === "replaced") {
    text = "This chat was opened in another window.";
    button = "Use it here";
  } else if (offline) {
    text = `You are offline. Reconnecting when the network is back.${waiting}`;
  } else if (heartbeatLost) {
    text = `The server stopped answering. Reconnecting…${waiting}`;
  } else if (status !== "open" && (state.conn.everOpened || attempt > 0)) {
    text = `Connection lost. Reconnecting…${waiting}`;
  }
  if (state.view !== "chat") text = ""; // a form is shown: nothing is connecting
  setBanner(text, button);
}

function setBanner(text, buttonLabel) {
  const banner = ui.offlineBanner;
  if (!text) {
    banner.hidden = true;
    ui.offlineText.textContent = "";
    return;
  }
  ui.reconnectNow.textContent = buttonLabel;
  if (banner.hidden) {
    banner.hidden = false;
    // Fill the live region after it is shown, so that screen readers announce it.
    setTimeout(() => {
      ui.offlineText.textContent = banner.dataset.text || "";
    }, 50);
  } else if (ui.offlineText.textContent !== text) {
    ui.offlineText.textContent = text;
  }
  banner.dataset.text = text;
}

function renderSidebar() {
  const rooms = [...state.rooms.values()].sort((a, b) => a.name.localeCompare(b.name));
  syncChildren(ui.roomList, rooms, sidebarCache.rooms, (r) => r.key, buildConvItem, updateConvItem);
  const threads = [...state.dms.values()]
    .filter((t) => t.open)
    .sort((a, b) => a.name.localeCompare(b.name));
  syncChildren(ui.dmList, threads, sidebarCache.dms, (t) => t.key, buildConvItem, updateConvItem);
  ui.dmEmpty.hidden = threads.length > 0;

  const conv = currentConv();
  const inRoom = conv?.kind === "room";
  ui.membersSection.hidden = !inRoom;
  const members = inRoom ? [...conv.members].sort((a, b) => a.localeCompare(b)) : [];
  ui.membersCount.textContent = inRoom ? `(${members.length})` : "";
  syncChildren(
    ui.memberList,
    members,
    sidebarCache.members,
    (u) => u,
    buildUserItem,
    updateUserItem,
  );
  const online = [...state.online].sort((a, b) => a.localeCompare(b));
  ui.onlineCount.textContent = `(${online.length})`;
  syncChildren(ui.onlineList, online, sidebarCache.online, (u) => u, buildUserItem, updateUserItem);

  const unread = [...state.rooms.values(), ...state.dms.values()].reduce((n, c) => n + c.unread, 0);
  ui.toggleUnread.hidden = unread === 0;
  ui.toggleUnread.textContent = unread > 0 ? String(unread) : "";
}

const sidebarCache = { rooms: new Map(), dms: new Map(), members: new Map(), online: new Map() };

function buildConvItem(conv) {
  const button = el("button", {
    cls: "conv-item",
    attrs: { type: "button" },
    data:
      conv.kind === "room"
        ? { room: conv.name, testid: "room-item" }
        : { peer: conv.name, testid: "dm-item" },
  });
  button.append(
    el("span", {
      cls: "conv-sigil",
      text: conv.kind === "room" ? "#" : "@",
      attrs: { "aria-hidden": "true" },
    }),
    el("span", { cls: "conv-name" }),
    el("span", {
      cls: "badge",
      data: { testid: "unread-count" },
      attrs: { "aria-hidden": "true" },
    }),
  );
  button.addEventListener("click", () => show(conv.key, { focus: true }));
  const item = el("li", {}, [button]);
  updateConvItem(item, conv);
  return item;
}

function updateConvItem(item, conv) {
  const button = item.firstChild;
  const [, name, badge] = button.children;
  name.textContent = conv.name;
  // The badge is read as part of the button's name: "lobby, 3 unread".
  badge.textContent = conv.unread > 0 ? String(conv.unread) : "";
  badge.hidden = conv.unread === 0;
  const label = conv.kind === "room" ? `Room ${conv.name}` : `Direct messages with ${conv.name}`;
  button.setAttribute("aria-label", conv.unread > 0 ? `${label}, ${conv.unread} unread` : label);
  if (conv.key === state.current) button.setAttribute("aria-current", "page");
  else button.removeAttribute("aria-current");
  button.dataset.unread = String(conv.unread);
}

function buildUserItem(user) {
  const button = el("button", {
    cls: "user-item",
    attrs: { type: "button" },
    data: { user, testid: "online-user" },
  });
  button.append(
    el("span", { cls: "presence-dot", attrs: { "aria-hidden": "true" } }),
    el("span", { cls: "user-name" }),
  );
  button.addEventListener("click", () => {
    if (button.dataset.user !== state.me) openDm(button.dataset.user);
  });
  const item = el("li", {}, [button]);
  updateUserItem(item, user);
  return item;
}

function updateUserItem(item, user) {
  const button = item.firstChild;
  button.dataset.user = user;
  const isMe = user === state.me;
  button.lastChild.textContent = isMe ? `${user} (you)` : user;
  button.disabled = isMe;
  button.title = user; // long names are cut short in the list
  button.setAttribute("aria-label", isMe ? `${user} (you)` : `Send a direct message to ${user}`);
}

function renderHeader() {
  const conv = currentConv();
  ui.leaveButton.hidden = conv?.kind !== "room";
  ui.closeDm.hidden = conv?.kind !== "dm";
  if (!conv) {
    const connecting = !state.conn.everOpened;
    ui.convTitle.textContent = connecting ? "Connecting…" : "No conversation";
    ui.convSubtitle.textContent = connecting ? "" : "Join a room from the sidebar.";
    ui.composerLabel.textContent = "Message";
    ui.composer.placeholder = "Type /join room";
    return;
  }
  if (conv.kind === "room") {
    ui.convTitle.textContent = `# ${conv.name}`;
    const n = conv.members.size;
    ui.convSubtitle.textContent = `${n} member${n === 1 ? "" : "s"} here`;
    ui.composerLabel.textContent = `Message room ${conv.name}`;
    ui.composer.placeholder = `Message #${conv.name}`;
    ui.leaveButton.setAttribute("aria-label", `Leave room ${conv.name}`);
  } else {
    ui.convTitle.textContent = `@ ${conv.name}`;
    ui.convSubtitle.textContent = state.online.has(conv.name) ? "Online" : "Offline";
    ui.composerLabel.textContent = `Direct message to ${conv.name}`;
    ui.composer.placeholder = `Message @${conv.name}`;
    ui.closeDm.setAttribute("aria-label", `Close direct messages with ${conv.name}`);
  }
}

function renderTitle() {
  const unread = [...state.rooms.values(), ...state.dms.values()].reduce((n, c) => n + c.unread, 0);
  const conv = currentConv();
  const where = conv ? (conv.kind === "room" ? `#${conv.name}` : `@${conv.name}`) : "";
  document.title = `${unread > 0 ? `(${unread}) ` : ""}${where ? `${where} · ` : ""}chatd`;
}

function renderTyping() {
  const conv = currentConv();
  const users = conv?.kind === "room" ? [...conv.typing.keys()].sort() : [];
  let text = "";
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = "Several people are typing…";
  if (ui.typing.textContent !== text) ui.typing.textContent = text;
}

// The message log ---------------------------------------------------------------------

function renderLog({ switched = false, prepended = false, toBottom = false } = {}) {
  const conv = currentConv();
  const scroller = ui.scroller;
  const wasNearBottom = isNearBottom();
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;

  ui.log.dataset.conv = conv ? conv.key : "";
  ui.log.dataset.room = conv?.kind === "room" ? conv.name : "";
  ui.log.setAttribute(
    "aria-label",
    conv
      ? conv.kind === "room"
        ? `Messages in room ${conv.name}`
        : `Direct messages with ${conv.name}`
      : "Messages",
  );
  if (switched) ui.log.setAttribute("aria-busy", "true"); // don't read a whole room out on switch

  const items = conv ? logItems(conv) : [];
  const lastKey = items.length > 0 ? items[items.length - 1].key : null;
  const appended = Boolean(conv) && !switched && lastKey !== conv.lastKey;
  if (conv) conv.lastKey = lastKey;
  syncChildren(
    ui.log,
    items,
    conv ? conv.elements : new Map(),
    (i) => i.key,
    buildLogItem,
    updateLogItem,
  );
  if (conv) renderSeen(conv);
  renderHistoryControls(conv);
  ui.emptyState.textContent = conv
    ? conv.kind === "room"
      ? "No messages yet. Say hello!"
      : `This is the start of your direct messages with ${conv.name}.`
    : state.conn.everOpened
      ? "You are not in any room. Join one from the sidebar or type /join room."
      : "";
  ui.emptyState.hidden = items.length > 0 || !ui.emptyState.textContent;

  if (switched) {
    restoreScroll(conv?.scroll);
    requestAnimationFrame(() => ui.log.removeAttribute("aria-busy"));
  } else if (prepended) {
    scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep what was on screen in place
  } else if (wasNearBottom || toBottom) {
    scrollToBottom();
  } else if (appended) {
    conv.newBelow = true; // scrolled up reading: offer a jump instead of moving the view
  }
  if (conv && isNearBottom()) conv.newBelow = false;
  ui.jumpLatest.hidden = !conv?.newBelow;
  maybeFillScreen(conv);
}

/** Messages by key, local lines after the message they followed, pending ones last. */
function logItems(conv) {
  const messages = [...conv.messages.entries()].sort((a, b) => a[0] - b[0]);
  const locals = conv.locals;
  const items = [];
  let li = 0;
  for (const [key, msg] of messages) {
    while (li < locals.length && locals[li].anchor < key)
      items.push({ key: locals[li].key, local: locals[li++] });
    items.push({ key: `m${key}`, msg });
  }
  while (li < locals.length) items.push({ key: locals[li].key, local: locals[li++] });
  for (const entry of state.outbox) {
    if (entry.convKey === conv.key && entry.expectsAck) items.push({ key: `p${entry.id}`, entry });
  }
  return items;
}

function buildLogItem(item) {
  if (item.local) return buildLocal(item.local);
  if (item.entry) return buildPending(item.entry);
  return buildMessage(item.msg);
}

function updateLogItem(node, item) {
  // Only pending entries change (queued -> sent -> acked, or failed): rebuild those.
  if (item.entry && node.dataset.status !== item.entry.status) return buildPending(item.entry);
  return node;
}

function buildMessage(msg) {
  const own = msg.from === state.me;
  const node = el("div", {
    cls: `msg${own ? " msg-own" : ""}${msg.kind === "me" ? " msg-me" : ""}`,
    data: { testid: "message", from: msg.from, kind: msg.kind || "text" },
  });
  if (msg.seq !== undefined) node.dataset.seq = String(msg.seq);
  if (msg.dm !== undefined) node.dataset.dm = String(msg.dm);
  if (msg.id) node.dataset.id = msg.id;
  if (msg.kind === "me") {
    // "/me waves" reads "* alice waves"
    const text = el("p", { cls: "msg-text" }, [
      el("span", { cls: "msg-from", text: `* ${msg.from} ` }),
    ]);
    appendText(text, msg.text);
    node.append(text, timeElement(msg.ts));
  } else {
    node.append(
      el("div", { cls: "msg-meta" }, [
        el("span", { cls: "msg-from", text: msg.from }),
        timeElement(msg.ts),
      ]),
      appendText(el("p", { cls: "msg-text" }), msg.text),
    );
  }
  return node;
}

/**
 * Put message text into `parent` as text nodes; http(s) links become <a> elements whose
 * text and href are set as properties, so nothing is ever parsed as HTML.
 */
function appendText(parent, text) {
  const pattern = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]}]/g;
  let last = 0;
  for (const match of String(text).matchAll(pattern)) {
    parent.append(document.createTextNode(text.slice(last, match.index)));
    const link = el("a", {
      text: match[0],
      attrs: { rel: "noopener noreferrer nofollow", target: "_blank" },
    });
    link.href = match[0];
    parent.append(link);
    last = match.index + match[0].length;
  }
  parent.append(document.createTextNode(String(text).slice(last)));
  return parent;
}

function buildLocal(local) {
  const isError = local.kind === "error";
  const node = el("div", {
    cls: `line line-${local.kind}`,
    data: { testid: isError ? "error-line" : "system-line" },
  });
  node.append(
    el("span", { cls: "line-icon", text: isError ? "⚠" : "ℹ", attrs: { "aria-hidden": "true" } }),
    el("span", { cls: "sr-only", text: isError ? "Error: " : "Notice: " }),
    appendText(el("span", { cls: "line-text" }), local.text.replace(/^Error: /, "")),
    timeElement(local.ts),
  );
  return node;
}

const STATUS_TEXT = {
  queued: "Waiting for the connection…",
  sent: "Sending…",
  acked: "Sent",
  failed: "Not sent",
};

function buildPending(entry) {
  const node = el("div", {
    cls: `msg msg-own msg-pending${entry.kind === "me" ? " msg-me" : ""}`,
    data: { testid: "pending-message", id: entry.id, status: entry.status },
  });
  const text =
    entry.kind === "me"
      ? appendText(
          el("p", { cls: "msg-text" }, [el("span", { cls: "msg-from", text: `* ${state.me} ` })]),
          entry.text,
        )
      : appendText(el("p", { cls: "msg-text" }), entry.text);
  const status = el("p", { cls: "msg-status", text: STATUS_TEXT[entry.status] || "" });
  if (entry.status === "failed") {
    status.textContent = `Not sent: ${entry.error || "error"} `;
    const retryButton = el("button", {
      cls: "link-button",
      text: "Retry",
      attrs: { type: "button" },
    });
    retryButton.addEventListener("click", () => retry(entry.id));
    const discardButton = el("button", {
      cls: "link-button",
      text: "Discard",
      attrs: { type: "button" },
    });
    discardButton.addEventListener("click", () => discard(entry.id));
    status.append(retryButton, " ", discardButton);
  }
  node.append(
    el("div", { cls: "msg-meta" }, [
      el("span", { cls: "msg-from", text: state.me || state.name || "" }),
    ]),
    text,
    status,
  );
  return node;
}

/** "Seen by …" under our newest message in the room, from relayed receipts. */
function renderSeen(conv) {
  if (conv.kind !== "room") return;
  let mine = 0;
  for (const [seq, msg] of conv.messages) if (msg.from === state.me && seq > mine) mine = seq;
  const readers =
    mine > 0
      ? [...conv.receipts]
          .filter(([, seq]) => seq >= mine)
          .map(([u]) => u)
          .sort()
      : [];
  const text = readers.length > 0 ? `Seen by ${readers.join(", ")}` : "";
  const target = conv.elements.get(`m${mine}`) || null;
  const shown = conv.seen; // {node, target, text}: touch the DOM only on a change
  if (shown && shown.target === target && shown.text === text) return;
  shown?.node.remove();
  conv.seen = null;
  if (!text || !target) return;
  const node = el("p", { cls: "msg-seen", text, data: { testid: "seen-by" } });
  target.append(node);
  conv.seen = { node, target, text };
}

function renderHistoryControls(conv) {
  const room = conv?.kind === "room" ? conv : null;
  ui.loadOlder.hidden = !room?.hasMoreBefore;
  ui.loadOlder.disabled = Boolean(room?.olderRequest);
  ui.loadOlder.textContent = room?.olderRequest ? "Loading older messages…" : "Load older messages";
  ui.historyStart.hidden = !room || room.hasMoreBefore || room.messages.size === 0;
}

/** If the messages do not fill the screen, there is nothing to scroll: load more now. */
function maybeFillScreen(conv) {
  if (conv?.kind !== "room" || !conv.hasMoreBefore || conv.olderRequest) return;
  if (ui.scroller.scrollHeight <= ui.scroller.clientHeight + NEAR_TOP_PX) requestOlder(conv);
}

function isNearBottom() {
  const s = ui.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

function saveScroll() {
  return isNearBottom() ? null : { fromBottom: ui.scroller.scrollHeight - ui.scroller.scrollTop };
}

function restoreScroll(saved) {
  if (!saved) scrollToBottom();
  else ui.scroller.scrollTop = ui.scroller.scrollHeight - saved.fromBottom;
}

// --- sidebar on narrow screens ------------------------------------------------------------

const narrow = window.matchMedia("(max-width: 600px)");

function openSidebar() {
  document.body.classList.add("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "true");
  ui.scrim.hidden = false;
  const target =
    ui.sidebar.querySelector("[aria-current]") || ui.sidebar.querySelector("button, input");
  target?.focus();
}

function closeSidebar({ restoreFocus = true } = {}) {
  if (!document.body.classList.contains("sidebar-open")) return;
  document.body.classList.remove("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "false");
  ui.scrim.hidden = true;
  if (restoreFocus) ui.sidebarToggle.focus();
}

function sidebarIsOverlay() {
  return narrow.matches && document.body.classList.contains("sidebar-open");
}

// --- authentication -----------------------------------------------------------------------
//
// The server admits people in one of two ways, and GET /api/me says which:
//   "open"      a guest picks a name (the name form), as chatd always did;
//   "required"  the /ws upgrade and the API need a login. The server keeps its token in
//               an HttpOnly cookie set at login: this page never sees it, the browser
//               sends it with every same-origin request and the upgrade by itself.
// A login ends by itself (the token expires): the server then closes the socket with
// 4401, or refuses the next upgrade, which a browser reports only as 1006, so /api/me is
// asked why. Either way the login form comes back while the chat stays as it was (the
// message box, the unsent messages, the session to resume) for when the same user is
// back.

let bootAttempt = 0;
let bootTimer = 0;

/** A same-origin JSON request: {status, body, response}, or null if nothing answered. */
async function api(path, { method = "GET", json } = {}) {
  const init = {
    method,
    credentials: "same-origin", // the login cookie goes with it (the default, made explicit)
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  };
  if (json !== undefined) {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(json);
  }
  try {
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch {
      /* 204 No Content, or not JSON */
    }
    return { status: response.status, body, response };
  } catch {
    return null; // offline, refused or timed out
  }
}

/** Ask the server how it admits people, and whether our cookie logs us in; show that. */
async function boot() {
  clearTimeout(bootTimer);
  const me = await api("/api/me");
  const auth = state.auth;
  const required = me?.status === 401 || (me?.status === 200 && me.body?.auth === "required");
  if (me?.status === 404 || (me?.status === 200 && me.body?.auth === "open")) {
    // 404: a chatd from before logins, which is open.
    auth.mode = "open";
    showNameForm();
  } else if (required) {
    auth.mode = "required";
    auth.registration = Boolean(me.body?.registration);
    // A cookie still good from an earlier visit: straight to the chat, no form at all.
    if (me.status === 200 && me.body.user) loggedIn(me.body.user, me.body.expires);
    else showLoginForm();
  } else {
    // Unreachable, or an answer we cannot read (a proxy's 502): try again with backoff.
    ui.bootStatus.textContent = "Cannot reach the chat server. Trying again…";
    showView("boot");
    bootTimer = setTimeout(boot, backoffDelay(bootAttempt++));
  }
}

function showNameForm() {
  showView("name");
  const saved = loadName();
  if (saved && NAME_RE.test(saved) && !ui.nameInput.value) ui.nameInput.value = saved;
  ui.nameInput.focus();
  ui.nameInput.select();
}

/** The login form, with `notice` (why it is shown again); focus in the first empty field. */
function showLoginForm({ notice = "" } = {}) {
  showView("login");
  renderLoginForm();
  setLoginError("");
  setNotice(notice);
  (ui.loginUsername.value ? ui.loginPassword : ui.loginUsername).focus();
}

function renderLoginForm() {
  const { registration, busy } = state.auth;
  const register = state.auth.registering && registration;
  ui.loginIntro.textContent = register
    ? "Create an account to join the chat."
    : "Log in to join the chat.";
  if (busy) ui.loginSubmit.textContent = register ? "Creating the account…" : "Logging in…";
  else ui.loginSubmit.textContent = register ? "Create the account" : "Log in";
  ui.loginForm.setAttribute("aria-busy", String(busy));
  // Password managers offer a new password only for autocomplete="new-password".
  ui.loginPassword.setAttribute("autocomplete", register ? "new-password" : "current-password");
  ui.passwordHint.hidden = !register;
  // A hidden element named in aria-describedby is still read out: name it only if shown.
  ui.loginPassword.setAttribute(
    "aria-describedby",
    register ? "password-hint login-error" : "login-error",
  );
  ui.registerSwitch.hidden = !registration;
  ui.registerQuestion.textContent = register ? "Already have an account?" : "No account yet?";
  ui.registerToggle.textContent = register ? "Log in" : "Register";
}

function toggleRegistering() {
  state.auth.registering = !state.auth.registering;
  renderLoginForm();
  setLoginError("");
  ui.loginUsername.focus();
}

let noticeTimer = 0;

/** Why the login form is back (expired, logged out): a polite status, not an error. */
function setNotice(text) {
  clearTimeout(noticeTimer);
  ui.loginNotice.hidden = !text;
  ui.loginNotice.textContent = "";
  if (!text) return;
  // Filled once shown, so that screen readers announce it (as the offline banner).
  noticeTimer = setTimeout(() => {
    ui.loginNotice.textContent = text;
  }, 50);
}

/**
 * Show `text` in the form's alert (empty: none) and mark `fields` invalid, focusing the
 * first. The alert was emptied when the request went out, so the same error twice is
 * announced twice.
 */
function setLoginError(text, fields = []) {
  ui.loginError.textContent = text;
  for (const input of [ui.loginUsername, ui.loginPassword]) {
    if (fields.includes(input)) input.setAttribute("aria-invalid", "true");
    else clearInvalid(input);
  }
  fields[0]?.focus();
}

function clearInvalid(input) {
  input.removeAttribute("aria-invalid");
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const auth = state.auth;
  if (auth.busy) return; // Enter pressed again while waiting
  const register = auth.registering && auth.registration;
  const username = ui.loginUsername.value.trim();
  const password = ui.loginPassword.value;
  const problem = checkCredentials(username, password, register);
  if (problem) {
    setLoginError(problem.text, problem.fields);
    return;
  }
  setLoginError("");
  auth.busy = true;
  renderLoginForm();
  const reply = await api(register ? "/api/auth/register" : "/api/auth/login", {
    method: "POST",
    json: { username, password },
  });
  auth.busy = false;
  renderLoginForm();
  if (reply && (reply.status === 200 || reply.status === 201) && reply.body?.user) {
    setNotice("");
    loggedIn(reply.body.user, reply.body.expires);
    return;
  }
  const failure = loginFailure(reply);
  if (failure.clearPassword) ui.loginPassword.value = "";
  renderLoginForm(); // a 403 may have closed registration
  setLoginError(failure.text, failure.fields);
}

/** What the form can tell before asking the server (registering: the server's rules). */
function checkCredentials(username, password, register) {
  if (!username) return { text: "Enter your user name.", fields: [ui.loginUsername] };
  if (!password) return { text: "Enter your password.", fields: [ui.loginPassword] };
  if (register && !NAME_RE.test(username)) {
    return {
      text: "A user name is 1–50 letters, digits, -, _ or . (no spaces).",
      fields: [ui.loginUsername],
    };
  }
  const length = codePoints(password);
  if (register && (length < PASSWORD_MIN || length > PASSWORD_MAX)) {
    return {
      text: `A password is ${PASSWORD_MIN} to ${PASSWORD_MAX} characters.`,
      fields: [ui.loginPassword],
    };
  }
  return null;
}

/** The error to show for a failed login or registration (`reply` null: no answer). */
function loginFailure(reply) {
  const username = ui.loginUsername;
  const password = ui.loginPassword;
  if (!reply) return { text: "Cannot reach the chat server. Try again.", fields: [] };
  const code = reply.body?.error?.code;
  const message = reply.body?.error?.message;
  if (reply.status === 401) {
    // Which of the two was wrong is not said (nor known to us): the name stays, the
    // password is typed again.
    return {
      text: "Wrong user name or password.",
      fields: [password],
      clearPassword: true,
    };
  }
  if (reply.status === 429) {
    const wait = retryAfterSeconds(reply.response);
    return {
      text:
        wait === null
          ? "Too many failed attempts. Wait a little, then try again."
          : `Too many failed attempts. Try again in ${formatWait(wait)}.`,
      fields: [],
    };
  }
  if (code === "name_taken") {
    return { text: "That user name is taken: choose another.", fields: [username] };
  }
  if (code === "bad_name") {
    return { text: message || "That user name is not allowed.", fields: [username] };
  }
  if (code === "bad_password") {
    return {
      text: message || `A password is ${PASSWORD_MIN} to ${PASSWORD_MAX} characters.`,
      fields: [password],
    };
  }
  if (code === "registration_closed") {
    state.auth.registration = false;
    state.auth.registering = false;
    return { text: "Creating accounts is closed here: log in instead.", fields: [username] };
  }
  const why = message || `the server answered ${reply.status}`;
  return { text: `Could not log in: ${why}.`, fields: [] };
}

/** Retry-After (RFC 9110 section 10.2.3) in seconds: delay-seconds or an HTTP-date. */
function retryAfterSeconds(response) {
  const value = response?.headers.get("Retry-After")?.trim();
  if (!value) return null;
  if (/^\d+$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

function formatWait(seconds) {
  if (seconds > 90) return `${Math.ceil(seconds / 60)} minutes`;
  const shown = Math.max(seconds, 1);
  return `${shown} second${shown === 1 ? "" : "s"}`;
}

/** A login (or the cookie on load) is good: chat as `user`. */
function loggedIn(user, expires) {
  const auth = state.auth;
  // Someone else on this page now: nothing of the previous user's chat may remain.
  if (state.name && state.name !== user) resetChat();
  auth.user = user;
  auth.expires = Number(expires) || 0;
  auth.registering = false;
  ui.loginPassword.value = "";
  state.conn.attempt = 0;
  startChat(user); // the same user after an expiry: the session and outbox are resumed
}

/**
 * Whether a closed socket may mean that the login ended: the upgrade was refused (which
 * a browser reports only as 1006), or the token's time is up by our clock.
 */
function loginMayHaveEnded(upgraded) {
  const auth = state.auth;
  if (auth.mode !== "required") return false;
  return !upgraded || (auth.expires > 0 && Date.now() / 1000 >= auth.expires);
}

/** A reconnect failed with a login: ask /api/me whether the login is still good. */
async function recheckLogin() {
  const me = await api("/api/me");
  if (state.view !== "chat" || state.conn.ws) return; // logged out or reconnected meanwhile
  if (me?.status === 401) {
    state.auth.registration = Boolean(me.body?.registration);
    loginExpired();
    return;
  }
  if (me?.status === 200 && me.body?.expires) state.auth.expires = Number(me.body.expires);
  scheduleReconnect(); // still logged in (or the server is down): a network problem
}

/** The login ended: back to the form, keeping the chat for when the user is back. */
function loginExpired() {
  stopConnection("login expired");
  if (state.auth.user) ui.loginUsername.value = state.auth.user;
  ui.loginPassword.value = "";
  showLoginForm({
    notice: "Your login has expired. Log in again to go on where you left off.",
  });
}

async function logOut() {
  const auth = state.auth;
  if (auth.busy) return;
  auth.busy = true;
  const reply = await api("/api/auth/logout", { method: "POST" });
  auth.busy = false;
  // The cookie is HttpOnly: only the server can remove it, so without its answer we are
  // still logged in and say so. (401: the login had already ended, which is as good.)
  if (![200, 204, 401].includes(reply?.status)) {
    showError("Could not log out: the server did not answer. Try again.");
    return;
  }
  resetChat();
  auth.user = null;
  auth.expires = 0;
  ui.loginUsername.value = ""; // a shared computer: the next person starts blank
  showLoginForm({ notice: "You have logged out." });
}

/** Forget the previous user's chat: the socket, the conversations, the message box. */
function resetChat() {
  stopTyping();
  stopConnection("logged out");
  clearTimeout(receiptTimer);
  Object.assign(state, {
    name: null,
    me: null,
    session: null,
    rooms: new Map(),
    dms: new Map(),
    online: new Set(),
    lastDm: 0,
    current: null,
    lastRoom: LOBBY,
    outbox: [],
    switchOnJoin: null,
  });
  Object.assign(state.conn, { attempt: 0, everOpened: false, heartbeatLost: false });
  for (const cache of Object.values(sidebarCache)) cache.clear();
  for (const list of [ui.roomList, ui.dmList, ui.memberList, ui.onlineList, ui.log]) {
    list.replaceChildren();
  }
  ui.composer.value = "";
  resizeComposer();
  render();
}

// --- events -------------------------------------------------------------------------------

function startChat(name) {
  state.name = name;
  if (state.auth.mode !== "required") saveName(name); // a login form has autocomplete
  showView("chat");
  render();
  connect();
  ui.composer.focus();
}

/** Show one screen: a form (boot, name, login) or the chat. */
function showView(view) {
  state.view = view;
  ui.login.hidden = view === "chat";
  ui.boot.hidden = view !== "boot";
  ui.nameForm.hidden = view !== "name";
  ui.loginForm.hidden = view !== "login";
  ui.app.hidden = view !== "chat";
  ui.logout.hidden = state.auth.mode !== "required";
  renderConnection(); // the connection banner belongs to the chat only
}

function onNameSubmit(event) {
  event.preventDefault();
  const name = ui.nameInput.value.trim();
  if (!NAME_RE.test(name)) {
    ui.nameError.textContent = "Use 1–50 letters, digits, -, _ or . (no spaces).";
    ui.nameError.hidden = false;
    ui.nameInput.setAttribute("aria-invalid", "true");
    ui.nameInput.focus();
    return;
  }
  ui.nameError.hidden = true;
  ui.nameInput.removeAttribute("aria-invalid");
  startChat(name);
}

function onJoinSubmit(event) {
  event.preventDefault();
  const name = ui.joinInput.value.trim().replace(/^#/, "");
  if (!ROOM_RE.test(name)) {
    ui.joinError.textContent = "A room name is 1–64 letters, digits, -, _ or .";
    ui.joinError.hidden = false;
    ui.joinInput.setAttribute("aria-invalid", "true");
    return;
  }
  ui.joinError.hidden = true;
  ui.joinInput.removeAttribute("aria-invalid");
  ui.joinInput.value = "";
  join(name);
}

function onComposerSubmit(event) {
  event?.preventDefault();
  if (send(ui.composer.value)) {
    ui.composer.value = "";
    resizeComposer();
    render({ toBottom: true }); // what you sent is shown even if you had scrolled up
  }
  ui.composer.focus();
}

function onComposerKeydown(event) {
  // Enter sends; Shift+Enter is a new line; while composing (IME) Enter is the IME's.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    onComposerSubmit();
  }
}

/** Grow the message box with its content, up to 6 lines (rows, not inline styles). */
function resizeComposer() {
  const lines = ui.composer.value.split("\n").length;
  ui.composer.rows = Math.min(Math.max(lines, 1), 6);
}

function onGlobalKeydown(event) {
  if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    if (ui.app.hidden) return;
    event.preventDefault();
    switchBy(event.key === "ArrowUp" ? -1 : 1);
    return;
  }
  if (event.key === "Escape" && !ui.app.hidden) {
    if (sidebarIsOverlay()) {
      closeSidebar();
    } else if (currentConv()?.kind === "dm") {
      closeDm();
    } else {
      return;
    }
    event.preventDefault();
  }
}

function closeDm() {
  const conv = currentConv();
  if (conv?.kind !== "dm") return;
  conv.open = false; // kept in memory; a new message reopens it
  state.current = null;
  showFallback();
  ui.composer.focus();
}

function onScroll() {
  const conv = currentConv();
  if (ui.scroller.scrollTop < NEAR_TOP_PX) requestOlder(conv);
  if (conv && isNearBottom() && conv.newBelow) {
    conv.newBelow = false;
    ui.jumpLatest.hidden = true;
  }
}

function bindEvents() {
  ui.nameForm.addEventListener("submit", onNameSubmit);
  ui.loginForm.addEventListener("submit", onLoginSubmit);
  ui.registerToggle.addEventListener("click", toggleRegistering);
  ui.loginUsername.addEventListener("input", () => clearInvalid(ui.loginUsername));
  ui.loginPassword.addEventListener("input", () => clearInvalid(ui.loginPassword));
  ui.logout.addEventListener("click", logOut);
  ui.joinForm.addEventListener("submit", onJoinSubmit);
  ui.composerForm.addEventListener("submit", onComposerSubmit);
  ui.composer.addEventListener("keydown", onComposerKeydown);
  ui.composer.addEventListener("input", () => {
    resizeComposer();
    noteTyping();
  });
  ui.composer.addEventListener("blur", stopTyping);
  ui.scroller.addEventListener("scroll", onScroll, { passive: true });
  ui.loadOlder.addEventListener("click", () => requestOlder(currentConv()));
  ui.jumpLatest.addEventListener("click", () => {
    scrollToBottom();
    const conv = currentConv();
    if (conv) conv.newBelow = false;
    ui.jumpLatest.hidden = true;
    ui.composer.focus();
  });
  ui.leaveButton.addEventListener("click", () => leave(currentConv()));
  ui.closeDm.addEventListener("click", closeDm);
  ui.sidebarToggle.addEventListener("click", () =>
    document.body.classList.contains("sidebar-open") ? closeSidebar() : openSidebar(),
  );
  ui.scrim.addEventListener("click", () => closeSidebar());
  ui.reconnectNow.addEventListener("click", () => {
    if (state.conn.status === "replaced") state.conn.attempt = 0;
    reconnectNow();
  });
  narrow.addEventListener("change", () => closeSidebar({ restoreFocus: false }));
  document.addEventListener("keydown", onGlobalKeydown);

  // The browser's own view of the network: show the banner at once, and try again as
  // soon as it is back instead of waiting out the backoff.
  window.addEventListener("offline", renderConnection);
  window.addEventListener("online", () => {
    renderConnection();
    if (state.view === "boot") boot(); // the server may be reachable again too
    else if (state.conn.status !== "replaced") reconnectNow();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    scheduleReceipt();
    if (state.conn.status === "open") probe(); // a frozen tab may hold a dead socket
  });
}

// --- start --------------------------------------------------------------------------------

/** The test hook for end-to-end tests. */
window.chatd = {
  state,
  send: (text) => send(String(text)),
  join: (room) => join(String(room)),
  connect: reconnectNow,
};

function main() {
  bindUi();
  bindEvents();
  boot();
}

main();
