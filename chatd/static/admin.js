// chatd admin page: plain ES2020 module, no dependencies, no build step.
//
// It opens /admin/ws and shows the `admin` snapshot the server sends once a second
// (docs/protocol.md, "The admin feed"). Nothing is polled: the socket is the only source.
// Every name from the server goes into the page through `textContent`, never innerHTML.

const BACKOFF_FIRST_MS = 500; // reconnect delays: 0.5 s doubling …
const BACKOFF_MAX_MS = 15_000; // … up to 15 s, each with jitter
const STALE_AFTER_MS = 5_000; // no snapshot this long on an open socket: reconnect
const STABLE_AFTER_MS = 10_000; // a connection up this long resets the backoff

/** All the page knows. Exposed as `window.chatdAdmin.state` for end-to-end tests. */
const state = {
  status: "connecting", // connecting | open | closed
  attempt: 0, // reconnects since the last stable connection
  snapshots: 0, // snapshots received since the page loaded
  last: null, // the latest `admin` snapshot
  ws: null,
  retryTimer: 0,
  staleTimer: 0,
  stableTimer: 0,
};

const $ = (id) => document.getElementById(id);

// --- the connection ----------------------------------------------------------------------

function connect() {
  clearTimeout(state.retryTimer);
  setStatus("connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let ws;
  try {
    ws = new WebSocket(`${scheme}://${location.host}/admin/ws`);
  } catch {
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  ws.addEventListener("open", () => {
    if (state.ws !== ws) return;
    setStatus("open");
    watchStale();
    state.stableTimer = setTimeout(() => {
      state.attempt = 0;
    }, STABLE_AFTER_MS);
  });
  ws.addEventListener("message", (event) => {
    if (state.ws !== ws) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message && message.type === "admin") {
      state.snapshots += 1;
      state.last = message;
      watchStale();
      render(message);
    }
  });
  // A refused upgrade (401, 403: not an administrator, or logged out) closes like a lost
  // connection: the browser does not say which. Keep trying, ever more slowly.
  ws.addEventListener("close", () => {
    if (state.ws !== ws) return;
    dropped();
  });
}

function dropped() {
  clearTimeout(state.staleTimer);
  clearTimeout(state.stableTimer);
  state.ws = null;
  setStatus("closed");
  scheduleReconnect();
}

function watchStale() {
  clearTimeout(state.staleTimer);
  const ws = state.ws;
  state.staleTimer = setTimeout(() => {
    if (state.ws !== ws || !ws) return;
    try {
      ws.close();
    } catch {
      /* already closing */
    }
    dropped();
  }, STALE_AFTER_MS);
}

function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
}

function scheduleReconnect() {
  clearTimeout(state.retryTimer);
  const delay = backoffDelay(state.attempt);
  state.attempt += 1;
  state.retryTimer = setTimeout(connect, delay);
}

function setStatus(status) {
  state.status = status;
  const indicator = $("admin-conn");
  indicator.dataset.state = status;
  indicator.textContent =
    status === "open" ? "Live" : status === "connecting" ? "Connecting…" : "Disconnected: retrying";
}

// --- rendering ---------------------------------------------------------------------------

const NUMBER = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

function duration(seconds) {
  const s = Math.floor(seconds);
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (days) return `${days} d ${hours} h`;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${rest} s`;
  return `${rest} s`;
}

function milliseconds(seconds) {
  return `${NUMBER.format(seconds * 1000)} ms`;
}

function setStat(name, text) {
  const cell = document.querySelector(`[data-stat="${name}"]`);
  if (cell.textContent !== text) cell.textContent = text;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (className) td.className = className;
  return td;
}

/** Replace a table body's rows (at most a few hundred: the server caps the lists). */
function fillTable(body, rows, testid, key, cells) {
  const fragment = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.testid = testid;
    tr.dataset[key] = row.name;
    for (const td of cells(row)) tr.append(td);
    fragment.append(tr);
  }
  body.replaceChildren(fragment);
}

function eventText(event) {
  const who = event.user ?? "";
  const room = event.room ? ` #${event.room}` : "";
  const detail = event.detail ? ` (${event.detail})` : "";
  const times = event.count > 1 ? ` ×${event.count}` : "";
  return `${event.kind.replace(/_/g, " ")} ${who}${room}${detail}${times}`.replace(/ +/g, " ");
}

function render(snapshot) {
  setStat("uptime", duration(snapshot.uptime));
  setStat("connections", NUMBER.format(snapshot.connections));
  setStat("sessions", NUMBER.format(snapshot.sessions));
  setStat("users_online", NUMBER.format(snapshot.users_online));
  setStat("rooms_active", NUMBER.format(snapshot.rooms_active));
  const rates = snapshot.messages;
  setStat("in_per_second", rates.in_per_second === null ? "–" : NUMBER.format(rates.in_per_second));
  setStat("out_per_second", rates.out_per_second === null ? "–" : NUMBER.format(rates.out_per_second));
  const lag = snapshot.loop_lag;
  setStat("loop_lag", lag ? `${milliseconds(lag.last)} / ${milliseconds(lag.max)}` : "–");

  const updated = $("admin-updated");
  const when = new Date(snapshot.ts);
  updated.dateTime = when.toISOString();
  updated.textContent = when.toLocaleTimeString();
  $("admin-sockets").textContent =
    `${snapshot.sockets} sockets · ${snapshot.admins} watching · ` +
    `${NUMBER.format(rates.in_total)} messages in, ${NUMBER.format(rates.out_total)} out since start`;

  fillTable($("rooms-body"), snapshot.rooms, "room-row", "room", (room) => [
    cell(room.name),
    cell(NUMBER.format(room.members), "num"),
    cell(room.last_seq, "num"),
    cell(NUMBER.format(room.messages), "num"),
  ]);
  $("rooms-empty").hidden = snapshot.rooms.length > 0;
  $("rooms-note").textContent =
    snapshot.rooms.length < snapshot.rooms_active
      ? `(the busiest ${snapshot.rooms.length} of ${snapshot.rooms_active}; ${snapshot.rooms_stored} stored)`
      : `(${snapshot.rooms_stored} stored)`;

  fillTable($("users-body"), snapshot.users, "user-row", "user", (user) => [
    cell(user.name),
    cell(user.account ? "account" : "guest"),
    cell(user.connections, "num"),
  ]);
  $("users-empty").hidden = snapshot.users.length > 0;
  $("users-note").textContent =
    snapshot.users.length < snapshot.users_online
      ? `(the first ${snapshot.users.length} of ${snapshot.users_online} by name)`
      : "";

  const list = $("event-list");
  const items = document.createDocumentFragment();
  for (const event of [...snapshot.events].reverse()) {
    const li = document.createElement("li");
    li.className = "event";
    li.dataset.testid = "event";
    li.dataset.kind = event.kind;
    if (event.user) li.dataset.user = event.user;
    const time = document.createElement("time");
    const at = new Date(event.ts);
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString();
    const text = document.createElement("span");
    text.className = "event-text";
    text.textContent = eventText(event);
    li.append(time, text);
    items.append(li);
  }
  list.replaceChildren(items);
  $("events-empty").hidden = snapshot.events.length > 0;
}

// --- start -------------------------------------------------------------------------------

/** The test hook for end-to-end tests. */
window.chatdAdmin = { state };

// Back online: try at once instead of waiting out the backoff.
window.addEventListener("online", () => {
  if (state.status === "closed") {
    state.attempt = 0;
    connect();
  }
});

connect();
