// The admin view of wsroom: polls the snapshot beside this page once a second and draws it.
// User ids, room names and reasons come from clients: every text goes in through
// textContent (or a canvas's fillText), never as markup.

const POLL_MS = 1000;
const CHART_SECONDS = 120;
const MIN_SPAN = 10;
// The page's own query string (a token, say) goes with every request for the snapshot, as
// the cookies and the credentials of HTTP authentication do by themselves.
const SNAPSHOT_URL = `snapshot.json${location.search}`;

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const number = new Intl.NumberFormat();
const count = (n) => (Number.isFinite(n) ? number.format(n) : "–");
const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;

function bytes(n) {
  if (!Number.isFinite(n)) return "–";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
const who = (user) => (typeof user === "string" ? user : "anonymous");

function rate(value) {
  if (!Number.isFinite(value)) return "–";
  return value >= 100 ? number.format(Math.round(value)) : value.toFixed(1);
}

/* ---------- the lists ---------- */
function fill(list, items, render, empty) {
  const nodes = items.length ? items.map(render) : [el("li", "empty", empty)];
  list.replaceChildren(...nodes);
}

function row(name, figure, ...rest) {
  const li = el("li");
  const title = el("span", "name", name);
  title.title = name;
  li.append(title, el("span", "figure", figure), ...rest.filter(Boolean));
  return li;
}

function roomRow(room) {
  const chips = el("div", "chips");
  for (const user of room.users) {
    const chip = el("span", "chip", user);
    chip.title = user;
    chips.append(chip);
  }
  const unlisted = room.members - room.anonymous - room.users.length;
  if (unlisted > 0) chips.append(el("span", "chip more", `+${count(unlisted)} more`));
  if (room.anonymous > 0) chips.append(el("span", "chip more", plural(room.anonymous, "anonymous connection")));
  return row(room.name, plural(room.members, "member"), el("span", "sub", plural(room.connections, "connection")), chips);
}

function queueRow(queue, limits) {
  const bar = el("div", "bar");
  const fullness = Math.max(queue.frames / limits.max_queue, queue.bytes / limits.max_queue_bytes);
  const fillBar = el("span");
  fillBar.style.width = `${Math.min(100, Math.max(2, fullness * 100)).toFixed(1)}%`;
  bar.append(fillBar);
  bar.title = `${Math.round(fullness * 100)}% of the queue's bound`;
  return row(who(queue.user), `${plural(queue.frames, "frame")} · ${bytes(queue.bytes)}`, el("span", "sub mono", queue.id), bar);
}

function connectionRow(conn) {
  const details = [conn.id, conn.address ?? "address unknown", plural(conn.rooms, "room")];
  if (conn.queued_frames) details.push(`${plural(conn.queued_frames, "frame")} queued`);
  return row(who(conn.user), `idle ${conn.idle.toFixed(0)} s`, el("span", "sub mono", details.join(" · ")));
}

function closeRow(close) {
  const sub = el("span", "sub");
  const kind = close.evicted ? "evicted" : close.by;
  sub.append(el("span", `tag ${kind}`, kind), `${close.code ?? "no code"}${close.reason ? ` · ${close.reason}` : ""} · `, el("span", "mono", close.id));
  return row(who(close.user), clock(close.time), sub);
}

function facts(list, entries) {
  const nodes = [];
  for (const [name, value] of entries) {
    const dd = el("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = String(value);
    nodes.push(el("dt", null, name), dd);
  }
  list.replaceChildren(...nodes);
}

function backplaneFacts(bp, stats) {
  const state = bp.available ? el("span", "tag good", "available") : el("span", "tag bad", "unavailable");
  const entries = [["kind", bp.kind], ["state", state]];
  if (bp.address) entries.push(["address", bp.address]);
  entries.push(["nodes", bp.nodes === null ? "unknown" : count(bp.nodes)]);
  if (typeof stats.backplane_round_trip === "number") entries.push(["round trip", `${(stats.backplane_round_trip * 1000).toFixed(1)} ms`]);
  if (typeof stats.backplane_reconnects === "number") entries.push(["reconnects", count(stats.backplane_reconnects)]);
  entries.push(["last error", bp.last_error ? `${bp.last_error} (${clock(bp.last_error_at)})` : "none"]);
  entries.push(["dropped bus messages", count(bp.dropped_messages)]);
  facts($("backplane"), entries);
}

const words = (name) => name.replaceAll("_", " ");

// A counter is a number, or numbers by kind (closes by reason, say): shown as text either way.
function counter(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return count(value);
  if (value && typeof value === "object") {
    const parts = Object.entries(value).map(([kind, n]) => `${kind}: ${typeof n === "number" ? count(n) : String(n)}`);
    return parts.length ? parts.join(", ") : "none";
  }
  return String(value);
}

/* ---------- the chart ---------- */
const samples = []; // { time, messages, frames }: per second, oldest first
let previous = null;

function record(snapshot) {
  const stats = snapshot.statistics;
  if (previous && snapshot.time > previous.time) {
    const seconds = snapshot.time - previous.time;
    const messages = stats.messages_published - previous.messages;
    const frames = stats.frames_received - previous.frames;
    // Counters start again from zero when the server restarts: that interval is unknown.
    if (messages >= 0 && frames >= 0) samples.push({ time: snapshot.time, messages: messages / seconds, frames: frames / seconds });
  }
  previous = { time: snapshot.time, messages: stats.messages_published, frames: stats.frames_received };
  while (samples.length && samples[0].time < snapshot.time - CHART_SECONDS) samples.shift();
}

function niceCeiling(value) {
  if (value <= 5) return 5;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawChart() {
  const canvas = $("chart");
  const box = canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(box.width));
  const height = Math.max(1, Math.round(box.height));
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const muted = style.getPropertyValue("--muted").trim() || "#667085";
  const line = style.getPropertyValue("--line").trim() || "#e2e5ea";
  const accent = style.getPropertyValue("--accent").trim() || "#2f6feb";
  const left = 44;
  const right = 8;
  const top = 8;
  const bottom = 20;
  const plotWidth = Math.max(1, width - left - right);
  const plotHeight = Math.max(1, height - top - bottom);
  const peak = Math.max(0, ...samples.map((s) => Math.max(s.messages, s.frames)));
  const ceiling = niceCeiling(peak);
  g.font = "11px system-ui, sans-serif";
  g.textBaseline = "middle";
  g.lineWidth = 1;
  for (let step = 0; step <= 4; step += 1) {
    const y = top + plotHeight - (plotHeight * step) / 4;
    g.strokeStyle = line;
    g.beginPath();
    g.moveTo(left, Math.round(y) + 0.5);
    g.lineTo(left + plotWidth, Math.round(y) + 0.5);
    g.stroke();
    g.fillStyle = muted;
    g.textAlign = "right";
    g.fillText(rate((ceiling * step) / 4), left - 6, y);
  }
  // The time axis spans what was seen, up to CHART_SECONDS: a page just opened fills it.
  const end = samples.length ? samples[samples.length - 1].time : 0;
  const span = samples.length ? Math.min(CHART_SECONDS, Math.max(MIN_SPAN, end - samples[0].time)) : CHART_SECONDS;
  g.textAlign = "left";
  g.textBaseline = "alphabetic";
  g.fillText(`${Math.round(span)} s ago`, left, height - 4);
  g.textAlign = "right";
  g.fillText("now", left + plotWidth, height - 4);
  if (!samples.length) return;
  const x = (time) => left + plotWidth - ((end - time) / span) * plotWidth;
  const y = (value) => top + plotHeight - (value / ceiling) * plotHeight;
  const trace = (key) => {
    g.beginPath();
    samples.forEach((sample, index) => (index ? g.lineTo(x(sample.time), y(sample[key])) : g.moveTo(x(sample.time), y(sample[key]))));
  };
  g.lineJoin = "round";
  g.setLineDash([4, 3]);
  g.strokeStyle = "#98a2b3";
  g.lineWidth = 1.5;
  trace("frames");
  g.stroke();
  g.setLineDash([]);
  trace("messages");
  g.lineTo(x(end), top + plotHeight);
  g.lineTo(x(samples[0].time), top + plotHeight);
  g.closePath();
  g.fillStyle = "rgba(47, 111, 235, .12)";
  g.fill();
  trace("messages");
  g.strokeStyle = accent;
  g.lineWidth = 2;
  g.stroke();
}

/* ---------- the snapshot ---------- */
function show(snapshot) {
  const stats = snapshot.statistics;
  record(snapshot);
  const last = samples[samples.length - 1];
  $("total-connections").textContent = count(stats.connections);
  $("total-users").textContent = count(stats.users);
  $("total-rooms").textContent = count(stats.rooms);
  $("total-rate").textContent = last ? rate(last.messages) : "–";
  $("total-queued").textContent = bytes(stats.queued_bytes);
  $("total-queued").title = plural(stats.queued_frames, "frame");
  $("total-evictions").textContent = count(stats.evictions);

  fill($("rooms"), snapshot.rooms, roomRow, "No room has members.");
  $("rooms-note").textContent = snapshot.rooms.length < stats.rooms ? `the ${snapshot.rooms.length} biggest of ${count(stats.rooms)}` : "";
  fill($("queues"), snapshot.queues, (queue) => queueRow(queue, snapshot.limits), "Every queue is empty.");
  $("queues-note").textContent = `of ${count(snapshot.limits.max_queue)} frames or ${bytes(snapshot.limits.max_queue_bytes)} each`;
  fill($("connections"), snapshot.connections, connectionRow, "No connection.");
  $("connections-note").textContent = snapshot.connections.length < stats.connections ? `the ${snapshot.connections.length} newest of ${count(stats.connections)}` : "";
  fill($("server-closes"), snapshot.server_closes, closeRow, "None since start.");
  fill($("closes"), snapshot.closes, closeRow, "None since start.");
  backplaneFacts(snapshot.backplane, stats);
  facts($("counters"), Object.entries(stats).map(([name, value]) => [words(name), counter(value)]));
  drawChart();
}

function status(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

let paused = false;
let timer = null;
let polling = false; // one request at a time, whatever Pause and Resume do meanwhile

async function poll() {
  timer = null;
  if (polling) return;
  polling = true;
  try {
    const response = await fetch(SNAPSHOT_URL, { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401 || response.status === 403) {
      status("refused", `refused by the server (HTTP ${response.status}): check your access`);
      return; // asking again would be refused again
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const snapshot = await response.json();
    show(snapshot);
    status(paused ? "off" : "on", `${paused ? "paused" : "live"} · updated ${clock(snapshot.time)}`);
  } catch (error) {
    status("down", `cannot reach the server (${error.message}); retrying`);
  } finally {
    polling = false;
  }
  if (!paused) timer = setTimeout(poll, POLL_MS);
}

$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").setAttribute("aria-pressed", String(paused));
  $("pause").textContent = paused ? "Resume" : "Pause";
  if (paused) {
    clearTimeout(timer);
    timer = null;
    status("off", "paused");
  } else if (timer === null) {
    poll();
  }
});

new ResizeObserver(() => drawChart()).observe($("chart"));
poll();
