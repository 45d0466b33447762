// wsroom.js: the client for wsroom's wire protocol, version 1, for browsers and Node.js.
//
// One ES module, no dependencies. It keeps a connection to a wsroom server alive
// (reconnecting with backoff and jitter), re-joins every room after a reconnect with
// `since`/`epoch` so nothing is missed or shown twice, matches answers to requests by `ref`,
// and turns every error the server sends into a WsroomError with a `code`.
//
//   import { connect } from "/wsroom.js";
//   const client = connect("/ws", { params: { token } });
//   const room = await client.join("lobby");
//   room.on("message", (m) => console.log(m.from, m.data));
//   await room.send({ text: "hi" });
//
// The protocol it speaks is documented in wsroom's docs ("Wire protocol").

export const VERSION = "0.1.0-dev.0";

/** Subprotocols offered, preferred first: batched frames when the server has them. */
export const SUBPROTOCOLS = Object.freeze(["wsroom.v1.batch", "wsroom.v1"]);

/** Error codes a server sends in `error` frames. */
export const SERVER_ERROR_CODES = Object.freeze([
  "invalid_json", "invalid_message", "unknown_type", "not_joined", "forbidden",
  "room_full", "user_offline", "rate_limited", "internal_error",
]);

/** Error codes this client raises itself. */
export const CLIENT_ERROR_CODES = Object.freeze([
  "timeout",       // no answer within `timeout` milliseconds
  "disconnected",  // the connection dropped after the frame was sent: it may or may not have been served
  "queue_full",    // sent while disconnected, beyond `maxQueue` frames waiting to be sent
  "closed",        // the client was closed (by `close()`, or for good by the server)
  "refused",       // the server refused the connection: HTTP 401/403 or close code 1008
]);

const SERVER_FRAME_TYPES = new Set([
  "welcome", "joined", "left", "message", "direct", "presence", "gap", "ack", "pong", "error",
]);

/** An error from the server's `error` frame, or from the client itself (see `code`). */
export class WsroomError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = "WsroomError";
    /** One of SERVER_ERROR_CODES or CLIENT_ERROR_CODES. */
    this.code = code;
    /** The `ref` of the frame that failed, when there was one. */
    this.ref = details.ref ?? null;
    /** The room the failed request was about, when there was one. */
    this.room = details.room ?? null;
    /** The HTTP status of a refused handshake (401, 403), when known. */
    this.status = details.status ?? null;
    /** The close code that ended the connection, when that is what failed. */
    this.closeCode = details.closeCode ?? null;
  }
}

const DEFAULTS = Object.freeze({
  params: undefined,
  protocols: SUBPROTOCOLS,
  reconnect: true,
  minDelay: 500,
  maxDelay: 15000,
  timeout: 10000,
  maxQueue: 100,
  pingInterval: 25000,
  WebSocket: undefined,
});

// Close codes after which reconnecting cannot help: the server closed on purpose (1000) or
// for a policy reason (1008: bad credentials, abuse, disconnect_user). 1013 ("try again
// later") is retried, but not soon.
const FINAL_CLOSE_CODES = new Set([1000, 1008]);
// ...except the server's heartbeat timeout: the client went quiet (a background tab whose
// timers the browser throttled, a laptop asleep), which a new connection puts right.
const HEARTBEAT_TIMEOUT_REASON = "heartbeat timeout";
const SLOW_CLIENT_CLOSE = 1013;
const SLOW_CLIENT_MIN_ATTEMPT = 3; // backoff as after 3 failures: 2 to 4 s with the defaults
// Joins in flight at once. After a reconnect a client in hundreds of rooms re-joins them
// all; a few at a time, and a pause that grows each time the server says rate_limited,
// keep it within the server's rate limit rather than closed for abusing it: each pause
// costs at most this many rate_limited answers, and the server closes after 20 in 10 s.
const JOIN_WINDOW = 4;
// Join refusals that say "not now" rather than "no": the join is tried again after a pause.
const TEMPORARY_JOIN_ERRORS = new Set(["rate_limited", "internal_error"]);
const JOIN_PAUSE_MIN = 1000;
const JOIN_PAUSE_MAX = 16000;

/** Open a connection to a wsroom server; it connects at once and reconnects by itself. */
export function connect(url, options = {}) {
  return new Client(url, options);
}

class Emitter {
  #listeners = new Map();

  /** Call `listener` on every `event`; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Call `listener` on the next `event` only. */
  once(event, listener) {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  /** Remove a listener added with `on`. */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  _emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return 0;
    // Counted before the calls: a `once` listener removes itself, yet it heard the event.
    const listeners = [...set];
    for (const listener of listeners) {
      try {
        listener(...args);
      } catch (error) {
        // A listener's bug must not break the connection's bookkeeping: report it and go on.
        reportListenerError(error);
      }
    }
    return listeners.length;
  }
}

function reportListenerError(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error("wsroom.js: a listener threw", error);
}

/** A connection to a wsroom server, kept alive across network drops and server restarts. */
export class Client extends Emitter {
  #url;
  #options;
  #WebSocket;
  #ws = null;
  #state = "connecting";
  #attempt = 0;
  #retryTimer = null;
  #welcomeTimer = null;
  #pingTimer = null;
  #lastSent = 0;
  #pingInterval = 0;
  #nextRef = 1;
  #pending = new Map(); // ref -> { frame, resolve, reject, timer, sent, room, where }
  #queue = []; // refs of requests waiting for a connection, in order
  #rooms = new Map();
  #joinQueue = []; // rooms whose join waits for a free place in the window
  #joinsInFlight = new Set(); // refs of joins sent and not answered yet
  #joinPause = null;
  #joinPauses = 0;
  #processing = Promise.resolve();
  #onOnline = null;
  #onOffline = null;

  constructor(url, options = {}) {
    super();
    this.#options = { ...DEFAULTS, ...options };
    this.#url = resolveUrl(url);
    this.#WebSocket = this.#options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError(
        "wsroom.js: no WebSocket implementation here; pass one, e.g. " +
          'connect(url, { WebSocket: (await import("ws")).WebSocket })',
      );
    }
    /** The user id the server authenticated (`null`: anonymous); set on each `welcome`. */
    this.user = null;
    /** This connection's id on the server; a new one after each reconnect. */
    this.connectionId = null;
    /** Seconds between frames the server asks for (`null`: none). */
    this.heartbeat = null;
    /** The subprotocol the server selected: "wsroom.v1" or "wsroom.v1.batch". */
    this.protocol = null;
    if (typeof globalThis.addEventListener === "function") {
      // Back online is a better signal than any timer: retry at once.
      this.#onOnline = () => {
        if (this.#retryTimer !== null) this.#open();
      };
      globalThis.addEventListener("online", this.#onOnline);
      // Gone offline: the connection is dead or about to be; do not wait for a ping to say so.
      this.#onOffline = () => {
        if (this.#state === "open") this.#drop({ code: 1006, reason: "offline", wasClean: false });
      };
      globalThis.addEventListener("offline", this.#onOffline);
    }
    this.#open();
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** The rooms joined or being joined, by name. */
  get rooms() {
    return new Map(this.#rooms);
  }

  /** The room `name`, when it was joined (or is being joined). */
  room(name) {
    return this.#rooms.get(name);
  }

  /**
   * Join `name`; resolves with the Room once the server answered `joined`. Joining a room
   * already joined resolves with the same Room. The room is joined again automatically
   * after every reconnect until `room.leave()`.
   */
  join(name, { data } = {}) {
    if (this.#state === "closed") return Promise.reject(this.#closedError());
    const existing = this.#rooms.get(name);
    // A room being left is on its way out: a new Room joins after the leave, which the
    // server serves first. Its `left` then finishes the old Room only.
    if (existing && existing.state !== "leaving") return existing._ready;
    const room = new Room(this, name, data);
    this.#rooms.set(name, room);
    if (this.#state === "open") this._sendJoin(room);
    // Otherwise the room is joined on `welcome`, the same path a reconnect takes.
    room._startTimer(this.#options.timeout);
    return room._ready;
  }

  /** Send `data` to every connection of user `to`; resolves with the server's `ack`. */
  direct(to, data) {
    return this._request({ type: "direct", to, data });
  }

  /**
   * Send a frame of an application-defined `type` (a `Room` method `on_<type>` on the
   * server); resolves with the `ack`: its `data` is what the handler returned, if anything.
   */
  request(type, data, { room } = {}) {
    if (typeof type !== "string" || !/^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(type)) {
      return Promise.reject(new TypeError(`wsroom.js: ${JSON.stringify(type)} is not a valid message type`));
    }
    const frame = { type };
    if (room !== undefined) frame.room = room;
    if (data !== undefined) frame.data = data;
    return this._request(frame);
  }

  /** Resolves with the round-trip time in milliseconds. */
  async ping() {
    const started = now();
    await this._request({ type: "ping" });
    return now() - started;
  }

  /** Reconnect now, instead of waiting for the backoff timer. */
  reconnect() {
    if (this.#state === "closed") throw this.#closedError();
    if (this.#ws) this.#drop({ code: 4000, reason: "reconnect requested", wasClean: true }, true, true);
    else this.#open();
  }

  /** Close the connection for good: no reconnect; pending requests are rejected. */
  close(code = 1000, reason = "") {
    if (this.#state === "closed") return;
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    this.#finish({ code, reason, error: null });
  }

  // ---- requests ----

  _request(frame, room = null) {
    if (this.#state === "closed") return Promise.reject(this.#closedError());
    const ref = this.#nextRef++;
    frame = { ...frame, ref };
    return new Promise((resolve, reject) => {
      // `where` names the room in errors: a Room's own frames, and a request() about one.
      const where = room?.name ?? frame.room ?? null;
      const entry = { frame, resolve, reject, timer: null, sent: false, room, where };
      if (this.#state !== "open") {
        if (this.#queue.length >= this.#options.maxQueue) {
          reject(
            new WsroomError("queue_full", `not connected, and ${this.#queue.length} frames already wait to be sent`, {
              ref,
              room: where,
            }),
          );
          return;
        }
        this.#queue.push(ref);
      }
      entry.timer = setTimeout(() => this.#timeout(ref), this.#options.timeout);
      this.#pending.set(ref, entry);
      if (this.#state === "open") this.#transmit(entry);
    });
  }

  #transmit(entry) {
    entry.sent = this.#send(entry.frame);
    if (!entry.sent) this.#queue.push(entry.frame.ref); // the socket just went: send it on the next one
  }

  #timeout(ref) {
    const entry = this.#pending.get(ref);
    if (!entry) return;
    this.#pending.delete(ref);
    const queued = this.#queue.indexOf(ref);
    if (queued >= 0) this.#queue.splice(queued, 1); // never sent: it will not be, later
    const what = entry.sent ? "no answer from the server" : "not connected, the frame was not sent";
    entry.reject(new WsroomError("timeout", `${what} within ${this.#options.timeout} ms`, { ref, room: entry.where }));
  }

  #settle(ref) {
    const entry = this.#pending.get(ref);
    if (!entry) return null;
    this.#pending.delete(ref);
    clearTimeout(entry.timer);
    return entry;
  }

  _sendJoin(room) {
    room._joinRef = null;
    if (!this.#joinQueue.includes(room)) this.#joinQueue.push(room);
    this.#pumpJoins();
  }

  #pumpJoins() {
    if (this.#state !== "open" || this.#joinPause !== null) return;
    while (this.#joinsInFlight.size < JOIN_WINDOW && this.#joinQueue.length > 0) {
      const room = this.#joinQueue.shift();
      if (room.state === "left" || this.#rooms.get(room.name) !== room) continue;
      const frame = { type: "join", room: room.name, ref: this.#nextRef++ };
      if (room._data !== undefined) frame.data = room._data;
      // Where we stopped, so the server replays only what we missed, or says it cannot.
      if (room._everJoined) {
        frame.since = room.offset;
        if (room.epoch !== null) frame.epoch = room.epoch;
      }
      room._joinRef = frame.ref;
      this.#joinsInFlight.add(frame.ref);
      this.#send(frame);
    }
  }

  #joinAnswered(ref, { retry = null } = {}) {
    if (!this.#joinsInFlight.delete(ref)) return;
    if (retry === null) {
      // The pauses grow until every join is through, not merely the next one.
      if (this.#joinQueue.length === 0 && this.#joinsInFlight.size === 0) this.#joinPauses = 0;
    } else {
      // First in line again, after a pause that doubles while the server keeps refusing.
      retry._joinRef = null;
      this.#joinQueue.unshift(retry);
      if (this.#joinPause === null) {
        const step = Math.min(JOIN_PAUSE_MAX, JOIN_PAUSE_MIN * 2 ** this.#joinPauses++);
        this.#joinPause = setTimeout(() => {
          this.#joinPause = null;
          this.#pumpJoins();
        }, Math.round(step / 2 + (Math.random() * step) / 2));
      }
    }
    this.#pumpJoins();
  }

  #resetJoins() {
    clearTimeout(this.#joinPause);
    this.#joinPause = null;
    this.#joinPauses = 0;
    this.#joinQueue = [];
    this.#joinsInFlight.clear();
  }

  _sendLeave(room) {
    return this._request({ type: "leave", room: room.name }, room);
  }

  _forget(room) {
    if (this.#rooms.get(room.name) === room) this.#rooms.delete(room.name);
  }

  _isOpen() {
    return this.#state === "open";
  }

  #send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    this.#lastSent = now();
    return true;
  }

  // ---- connection ----

  async #open() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#state === "closed") return;
    let url;
    try {
      url = await this.#connectUrl();
    } catch (error) {
      this.#emitError(error instanceof Error ? error : new Error(String(error)));
      this.#scheduleRetry({ code: 1006, reason: "params failed" });
      return;
    }
    if (this.#state === "closed" || this.#ws) return;
    let ws;
    try {
      ws = new this.#WebSocket(url, [...this.#options.protocols]);
    } catch (error) {
      // A malformed URL: retrying would fail the same way.
      this.#finish({ code: 1006, reason: String(error?.message ?? error), error: new WsroomError("refused", String(error?.message ?? error)) });
      return;
    }
    this.#ws = ws;
    let opened = false;
    let failure = null;
    // A server or proxy that accepts the connection but never completes the upgrade, or
    // never says welcome, would keep us waiting for good: give up after `timeout`, retry.
    clearTimeout(this.#welcomeTimer);
    this.#welcomeTimer = setTimeout(() => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      detach(ws);
      try {
        ws.close();
      } catch {
        /* already closing */
      }
      const info = { code: 1006, reason: "no welcome from the server", wasClean: false };
      if (opened) this.#drop(info, false);
      else this.#scheduleRetry(info);
    }, this.#options.timeout);
    ws.onopen = () => {
      opened = true;
      this.protocol = ws.protocol || null;
    };
    ws.onerror = (event) => {
      failure = event?.message ?? event?.error?.message ?? null;
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      clearTimeout(this.#welcomeTimer);
      const info = { code: event.code, reason: event.reason ?? "", wasClean: !!event.wasClean };
      if (opened) this.#drop(info, false);
      else this.#handshakeFailed(info, failure);
    };
  }

  async #connectUrl() {
    let params = this.#options.params;
    // A function is called before each attempt, so a token can be refreshed.
    if (typeof params === "function") params = await params();
    const url = new URL(this.#url);
    for (const [key, value] of Object.entries(params ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  async #handshakeFailed(info, failure) {
    // A browser never shows the HTTP status of a refused upgrade; Node's `ws` names it in
    // its error, and a same-origin page can ask the server again without the upgrade.
    let status = statusFromError(failure);
    let retryAfter = null;
    if (status === null) ({ status, retryAfter } = await this.#probe());
    if (this.#state === "closed") return;
    if (status === 401 || status === 403) {
      const error = new WsroomError("refused", `the server refused the connection (HTTP ${status})`, { status, closeCode: info.code });
      this.#finish({ ...info, status, error });
      return;
    }
    this.#scheduleRetry({ ...info, status }, retryAfter);
  }

  async #probe() {
    const unknown = { status: null, retryAfter: null };
    const location = globalThis.location;
    if (typeof globalThis.fetch !== "function" || !location?.origin) return unknown;
    let url;
    try {
      url = new URL(await this.#connectUrl());
    } catch {
      return unknown;
    }
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    if (url.origin !== location.origin) return unknown; // another origin's answer is opaque
    try {
      const response = await fetch(url, { cache: "no-store", credentials: "same-origin", redirect: "manual" });
      const seconds = Number(response.headers.get("Retry-After"));
      return { status: response.status, retryAfter: Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : null };
    } catch {
      return unknown;
    }
  }

  #drop(info, detachFirst = true, immediate = false) {
    // The connection is gone (or being replaced): whatever was in flight on it is lost.
    const ws = this.#ws;
    if (detachFirst && ws) {
      this.#ws = null;
      detach(ws);
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    clearInterval(this.#pingTimer);
    this.#pingTimer = null;
    this.#resetJoins();
    for (const [ref, entry] of [...this.#pending]) {
      if (!entry.sent) continue;
      this.#settle(ref);
      if (entry.frame.type === "leave") {
        // The server forgets our rooms with the connection: the leave is as good as done.
        entry.room?._left();
        entry.resolve({ type: "left", room: entry.frame.room, ref });
        continue;
      }
      entry.reject(
        new WsroomError("disconnected", "the connection closed before the server answered; the frame may or may not have been served", {
          ref,
          room: entry.where,
          closeCode: info.code,
        }),
      );
    }
    for (const room of this.#rooms.values()) room._disconnected();
    const userWantsIt = typeof this.#options.reconnect === "function" ? this.#options.reconnect(info) : this.#options.reconnect;
    const final = FINAL_CLOSE_CODES.has(info.code) && !(info.code === 1008 && info.reason === HEARTBEAT_TIMEOUT_REASON);
    if (!userWantsIt || (final && typeof this.#options.reconnect !== "function")) {
      const error =
        info.code === 1008
          ? new WsroomError("refused", `the server closed the connection: ${info.reason || "policy violation"}`, { closeCode: 1008 })
          : null;
      this.#finish({ ...info, error });
      return;
    }
    if (immediate) {
      this.#setState("reconnecting", { ...info, delay: 0, attempt: this.#attempt });
      this.#open();
      return;
    }
    if (info.code === SLOW_CLIENT_CLOSE) this.#attempt = Math.max(this.#attempt, SLOW_CLIENT_MIN_ATTEMPT);
    this.#scheduleRetry(info);
  }

  #scheduleRetry(info, minimum = null) {
    if (this.#state === "closed") return;
    if (this.#options.reconnect === false) {
      this.#finish({ ...info, error: null });
      return;
    }
    // Exponential backoff with "equal jitter": a restarted server is not met by every
    // client at the same instant, and no client waits less than half its step.
    const step = Math.min(this.#options.maxDelay, this.#options.minDelay * 2 ** Math.min(this.#attempt, 30));
    let delay = Math.round(step / 2 + (Math.random() * step) / 2);
    if (minimum !== null) delay = Math.max(delay, minimum);
    this.#attempt += 1;
    this.#setState("reconnecting", { ...info, delay, attempt: this.#attempt });
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  #finish(info) {
    const wasClosed = this.#state === "closed";
    this.#state = "closed";
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#welcomeTimer);
    clearInterval(this.#pingTimer);
    this.#retryTimer = this.#welcomeTimer = this.#pingTimer = null;
    this.#resetJoins();
    if (this.#onOnline) globalThis.removeEventListener?.("online", this.#onOnline);
    if (this.#onOffline) globalThis.removeEventListener?.("offline", this.#onOffline);
    const reason = info.error ?? this.#closedError();
    for (const ref of [...this.#pending.keys()]) this.#settle(ref).reject(reason);
    this.#queue = [];
    for (const room of [...this.#rooms.values()]) room._closed(reason);
    this.#rooms.clear();
    if (!wasClosed) this._emit("state", "closed", info);
  }

  #closedError() {
    return new WsroomError("closed", "the client is closed");
  }

  #setState(state, info = {}) {
    this.#state = state;
    this._emit("state", state, info);
  }

  #emitError(error) {
    // An error nobody asked about: an `error` frame without a matching ref, say. Logged
    // when nobody listens, so it is never silent.
    if (this._emit("error", error) === 0) console.warn("wsroom.js:", error.message);
  }

  // ---- incoming frames ----

  #receive(raw) {
    if (typeof raw !== "string") return; // only JSON is offered: binary frames are not ours
    let value;
    try {
      value = JSON.parse(raw);
    } catch {
      return;
    }
    const frames = Array.isArray(value) ? value : [value];
    const ws = this.#ws;
    // Frames are handled strictly in order. After a `joined` whose promise we resolve,
    // the rest of a batch waits one task, so the code awaiting `join()` attaches its
    // listeners before the room's next messages are emitted.
    this.#processing = this.#processing.then(async () => {
      for (const frame of frames) {
        // The rest of a batch from a connection that closed meanwhile is not ours any
        // more: the re-join after the reconnect recovers its messages.
        if (ws !== this.#ws) return;
        if (!frame || typeof frame !== "object" || typeof frame.type !== "string") continue;
        let next;
        try {
          next = this.#handle(frame);
        } catch (error) {
          reportListenerError(error);
        }
        if (next === "yield") await nextTask();
      }
    });
  }

  #handle(frame) {
    switch (frame.type) {
      case "welcome":
        return this.#welcome(frame);
      case "joined": {
        this.#joinAnswered(frame.ref);
        // A stray is an answer for a room we no longer have, and only that: a room we
        // have handles its own answers (re-joins included), even ones to an older join.
        const room = this.#rooms.get(frame.room);
        return room ? room._joined(frame) : this.#strayJoin(frame);
      }
      case "left":
        return this.#answer(frame);
      case "message":
      case "presence":
      case "gap":
        this.#rooms.get(frame.room)?._frame(frame);
        return;
      case "direct":
        this._emit("direct", frame);
        return;
      case "ack":
      case "pong":
        return this.#answer(frame);
      case "error":
        return this.#error(frame);
      default:
        if (SERVER_FRAME_TYPES.has(frame.type)) return;
        // An application event: to its room's listeners, or to the client's.
        if (typeof frame.room === "string") this.#rooms.get(frame.room)?._event(frame);
        else this._emit("event", frame);
    }
  }

  #welcome(frame) {
    clearTimeout(this.#welcomeTimer);
    this.#welcomeTimer = null;
    this.user = frame.user ?? null;
    this.connectionId = frame.connection ?? null;
    this.heartbeat = typeof frame.heartbeat === "number" && frame.heartbeat > 0 ? frame.heartbeat : null;
    this.#attempt = 0;
    // A server that asks for a heartbeat gets a frame well within it; otherwise a ping now
    // and then tells a dead connection (a laptop waking up) from a quiet one.
    this.#pingInterval = this.heartbeat !== null ? Math.min(this.heartbeat * 500, this.#options.pingInterval) : this.#options.pingInterval;
    clearInterval(this.#pingTimer);
    if (this.#pingInterval > 0) this.#pingTimer = setInterval(() => this.#keepAlive(), Math.max(50, this.#pingInterval / 2));
    this.#lastSent = now();
    this.#setState("open", { user: this.user, connection: this.connectionId });
    this._emit("welcome", frame);
    // Rooms first, then what was sent while offline: the server answers in order, so a
    // queued message to a room is served after its join.
    for (const room of this.#rooms.values()) this._sendJoin(room);
    const queued = this.#queue;
    this.#queue = [];
    for (const ref of queued) {
      const entry = this.#pending.get(ref);
      if (entry) this.#transmit(entry);
    }
  }

  #keepAlive() {
    if (this.#state !== "open" || now() - this.#lastSent < this.#pingInterval) return;
    const ws = this.#ws;
    this._request({ type: "ping" }).catch((error) => {
      // No pong in time on the same connection: it is dead, even if the OS has not noticed.
      if (error.code === "timeout" && ws === this.#ws) this.#drop({ code: 1006, reason: "no answer to ping", wasClean: false });
    });
  }

  #strayJoin(frame) {
    // A join answered after its promise timed out: we do not want that room any more.
    if (typeof frame.room === "string") this.#send({ type: "leave", room: frame.room });
  }

  #answer(frame) {
    const entry = this.#settle(frame.ref);
    if (!entry) return;
    if (frame.type === "left") entry.room?._left();
    const answer = { ...frame };
    entry.resolve(answer);
  }

  #error(frame) {
    const details = { ref: frame.ref ?? null };
    const message = typeof frame.message === "string" ? frame.message : frame.code;
    for (const room of this.#rooms.values()) {
      if (room._joinRef !== null && room._joinRef === frame.ref) {
        if (TEMPORARY_JOIN_ERRORS.has(frame.code)) {
          // Not a refusal: the join is sent again after a pause, until its timeout, which
          // then rejects with this error rather than a bare "timeout".
          room._lastRefusal = new WsroomError(frame.code, message, { ...details, room: room.name });
          this.#joinAnswered(frame.ref, { retry: room });
          return;
        }
        this.#joinAnswered(frame.ref);
        room._refused(new WsroomError(frame.code, message, { ...details, room: room.name }));
        return;
      }
    }
    this.#joinAnswered(frame.ref);
    const entry = this.#settle(frame.ref);
    if (entry) {
      if (entry.frame.type === "leave" && frame.code === "not_joined") {
        // Not in the room: what leaving was for.
        entry.room?._left();
        entry.resolve({ type: "left", room: entry.frame.room, ref: frame.ref });
        return;
      }
      entry.reject(new WsroomError(frame.code, message, { ...details, room: entry.where }));
      return;
    }
    this.#emitError(new WsroomError(frame.code, message, details));
  }
}

/** A room joined through a Client. Events: message, presence, members, gap, event, left. */
export class Room extends Emitter {
  #client;
  #buffer = []; // live messages that arrived while a re-join was in flight
  #resolveReady;
  #rejectReady;
  #timer = null;

  constructor(client, name, data) {
    super();
    this.#client = client;
    this._data = data;
    this._joinRef = null;
    this._everJoined = false;
    this._lastRefusal = null; // the last "not now" from the server, while a first join retries
    this._ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // An unhandled rejection of a join the caller never awaited must not crash Node.
    this._ready.catch(() => {});
    /** The room's name. */
    this.name = name;
    /** "joining" | "joined" | "left" */
    this.state = "joining";
    /** The users in the room (anonymous connections are not listed). */
    this.members = [];
    /** The history the last `joined` brought: the newest messages, or what was missed. */
    this.history = [];
    /** Whether the last re-join recovered every missed message (`null` on a first join). */
    this.recovered = null;
    /** The largest message id seen in this room. */
    this.offset = 0;
    /** The run of the room's ids that `offset` belongs to. */
    this.epoch = null;
  }

  /** Post `data` to the room; resolves with the `ack` (`id`: the stored message's id). */
  send(data) {
    if (this.state === "left") return Promise.reject(this.#notJoined());
    return this.#client._request({ type: "message", room: this.name, data }, this);
  }

  /** Send an application-defined `type` about this room; resolves with the `ack`. */
  request(type, data) {
    if (this.state === "left") return Promise.reject(this.#notJoined());
    return this.#client.request(type, data, { room: this.name });
  }

  /** Leave the room; it is not re-joined after a reconnect any more. */
  async leave() {
    if (this.state === "left") return;
    if (!this.#client._isOpen()) {
      // Nobody to tell: the server forgot this connection's rooms when it dropped.
      this._left();
      return;
    }
    this.state = "leaving";
    await this.#client._sendLeave(this);
  }

  #notJoined() {
    return new WsroomError("not_joined", `not in the room ${JSON.stringify(this.name)}: join it again first`, { room: this.name });
  }

  _startTimer(timeout) {
    this.#timer = setTimeout(() => {
      if (this._everJoined) return;
      this.#client._forget(this);
      this.state = "left";
      this.#rejectReady(
        this._lastRefusal ??
          new WsroomError("timeout", `the room ${JSON.stringify(this.name)} was not joined within ${timeout} ms`, { room: this.name }),
      );
    }, timeout);
  }

  _joined(frame) {
    if (frame.ref !== this._joinRef || this.state === "left") return;
    const rejoin = this._everJoined;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    // A new epoch restarts the ids: next to our old offset they would all look like duplicates.
    if (epoch !== this.epoch) this.offset = 0;
    this.epoch = epoch;
    this.members = Array.isArray(frame.members) ? [...frame.members] : [];
    this.history = Array.isArray(frame.history) ? frame.history : [];
    this.recovered = rejoin ? frame.recovered === true : null;
    this._joinRef = null;
    if (this.state !== "leaving") this.state = "joined";
    this._everJoined = true;
    clearTimeout(this.#timer);
    const live = this.#buffer;
    this.#buffer = [];
    if (!rejoin) {
      // The first join: its history is in `room.history`, for the code that awaits join().
      for (const message of this.history) this.#advance(message);
      for (const message of live) this.#accept(message);
      this.#resolveReady(this);
      return "yield";
    }
    this._emit("members", this.members);
    if (frame.recovered !== true) {
      this._emit("gap", { room: this.name, epoch, offset: Number.isInteger(frame.offset) ? frame.offset : this.offset, reason: "not recovered" });
    }
    for (const message of this.history) this.#accept({ ...message, replayed: true });
    for (const message of live) this.#accept(message);
    return undefined;
  }

  _frame(frame) {
    if (this.state === "left") return;
    if (frame.type === "message") {
      if (this._joinRef !== null) this.#buffer.push(frame);
      else this.#accept(frame);
    } else if (frame.type === "presence") {
      this.#presence(frame);
    } else if (frame.type === "gap") {
      // Messages may have been missed while connected; ids continue after `offset`.
      if (typeof frame.epoch === "string") this.epoch = frame.epoch;
      if (Number.isInteger(frame.offset)) this.offset = frame.offset;
      this._emit("gap", { room: this.name, epoch: this.epoch, offset: this.offset, reason: "gap" });
    }
  }

  _event(frame) {
    if (this.state !== "left") this._emit("event", frame);
  }

  #presence(frame) {
    const user = frame.user;
    if (frame.event === "join" && !this.members.includes(user)) this.members = [...this.members, user];
    else if (frame.event === "leave") this.members = this.members.filter((member) => member !== user);
    else if (frame.event !== "join") return;
    this._emit("presence", { room: this.name, event: frame.event, user });
    this._emit("members", this.members);
  }

  #advance(message) {
    if (Number.isInteger(message?.id) && message.id > this.offset) this.offset = message.id;
  }

  #accept(message) {
    // Ids only grow within a room: anything at or below the newest one seen was shown already.
    if (!message || !Number.isInteger(message.id) || message.id <= this.offset) return;
    this.offset = message.id;
    this._emit("message", message);
  }

  _disconnected() {
    if (this.state === "leaving") {
      this._left();
      return;
    }
    if (this.state === "joined") this.state = "joining";
    this._joinRef = null;
    this.#buffer = [];
  }

  _refused(error) {
    this._joinRef = null;
    const first = !this._everJoined;
    this.#finish();
    if (first) this.#rejectReady(error);
    else this._emit("left", { room: this.name, error });
  }

  _left() {
    if (this.state === "left") return;
    const first = !this._everJoined;
    this.#finish();
    // Left before its first join was answered (and it never will be): the join() promise
    // must not wait for good.
    if (first) this.#rejectReady(new WsroomError("not_joined", `the room ${JSON.stringify(this.name)} was left before it was joined`, { room: this.name }));
    this._emit("left", { room: this.name, error: null });
  }

  _closed(error) {
    if (this.state === "left") return;
    const first = !this._everJoined;
    this.#finish();
    if (first) this.#rejectReady(error);
    else this._emit("left", { room: this.name, error });
  }

  #finish() {
    clearTimeout(this.#timer);
    this.state = "left";
    this.#buffer = [];
    this.#client._forget(this);
  }
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  // Not null: Node's `ws` emits an 'error' when a socket still in its handshake is closed,
  // and an 'error' nobody listens to is an uncaught exception that ends the process.
  ws.onerror = () => {};
}

function statusFromError(message) {
  // Node's `ws`: "Unexpected server response: 401".
  const match = typeof message === "string" ? /server response: (\d{3})/.exec(message) : null;
  return match ? Number(match[1]) : null;
}

function resolveUrl(url) {
  const base = globalThis.location?.href;
  let resolved;
  try {
    resolved = base ? new URL(url, base) : new URL(url);
  } catch {
    throw new TypeError(`wsroom.js: ${JSON.stringify(String(url))} is not a URL; outside a page, give a full one such as ws://127.0.0.1:8765/ws`);
  }
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new TypeError(`wsroom.js: ${url} is not a WebSocket URL (ws:, wss:, http:, https: or a path)`);
  }
  return resolved.toString();
}

function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

function nextTask() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
