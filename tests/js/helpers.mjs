// Shared helpers of the Node.js tests of wsroom.js: real wsroom servers in child processes
// (tests/js/server.py), clients whose WebSocket records every frame they send, and ways to
// wait for events with a deadline instead of sleeping.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";

import { connect } from "../../src/wsroom/browser/wsroom.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PYTHON = process.env.WSROOM_TEST_PYTHON || path.join(ROOT, ".venv", "bin", "python");
export const REDIS_URL = process.env.WSROOM_TEST_REDIS_URL || "redis://127.0.0.1:6379/0";

/** How long anything the tests wait for may take, unless a test says otherwise. */
export const WAIT = 5000;

/** A unique name, so tests sharing a server never share a room or a user. */
export function unique(prefix) {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** Reject with a clear message when `promise` has not settled within `ms`. */
export function deadline(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** Resolves with the arguments of the next `event` for which `filter(...args)` holds. */
export function nextEvent(emitter, event, { filter = () => true, timeout = WAIT } = {}) {
  let off;
  const happened = new Promise((resolve) => {
    off = emitter.on(event, (...args) => {
      if (!filter(...args)) return;
      off();
      resolve(args);
    });
  });
  return deadline(happened, timeout, `the event ${JSON.stringify(event)}`).finally(() => off());
}

/** Resolves with the info of the client's next `state` event to `state`. */
export async function nextState(client, state, timeout = WAIT) {
  const [, info] = await nextEvent(client, "state", { filter: (s) => s === state, timeout });
  return info;
}

/** Every first argument `event` gets from now on, in an array that fills as they come. */
export function record(emitter, event) {
  const seen = [];
  emitter.on(event, (first, ...rest) => seen.push(rest.length ? [first, ...rest] : first));
  return seen;
}

/** Resolves once `predicate()` holds, checking it after every `event` (and at once). */
export async function until(emitter, event, predicate, what, timeout = WAIT) {
  if (predicate()) return;
  await nextEvent(emitter, event, { filter: () => predicate(), timeout }).catch((error) => {
    throw new Error(`${error.message} (until ${what})`);
  });
}

/** A port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A WebSocket class for connect()'s options that keeps every frame the client sends:
 * `sent` (all of them, parsed) and `sockets` (each socket, with its own `frames`).
 */
export function recordingWebSocket() {
  const sockets = [];
  const sent = [];
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.frames = [];
      this.offered = protocols;
      sockets.push(this);
    }

    send(data, ...rest) {
      let frame = data;
      try {
        frame = JSON.parse(data);
      } catch {
        // a test sending raw text on purpose
      }
      sent.push(frame);
      this.frames.push(frame);
      return super.send(data, ...rest);
    }
  }
  return { WebSocket: RecordingWebSocket, sockets, sent };
}

/** A wsroom server (tests/js/server.py) in a child process. */
export class Server {
  constructor(child, port, exited, stderr) {
    this.child = child;
    this.port = port;
    this.url = `ws://127.0.0.1:${port}/ws`;
    this.exited = exited;
    this.stderr = stderr;
  }

  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Graceful stop (SIGTERM: clients get 1001); SIGKILL if it takes too long. */
  async stop() {
    if (!this.running) return this.exited;
    this.child.kill("SIGTERM");
    try {
      return await deadline(this.exited, WAIT, `the server (pid ${this.child.pid}) to stop`);
    } catch {
      return this.kill();
    }
  }

  /** The server dies at once: its clients see their TCP connections cut (1006). */
  async kill() {
    if (this.running) this.child.kill("SIGKILL");
    return this.exited;
  }
}

/** Options of tests/js/server.py: { port, heartbeat, maxQueue, history, rate, burst, prefix }. */
export async function startServer(options = {}) {
  const flags = {
    port: "--port",
    heartbeat: "--heartbeat",
    maxQueue: "--max-queue",
    history: "--history",
    rate: "--rate",
    burst: "--burst",
    prefix: "--prefix",
    redisUrl: "--redis-url",
  };
  const args = ["-m", "tests.js.server"];
  for (const [name, value] of Object.entries(options)) {
    if (!(name in flags)) throw new TypeError(`unknown server option ${name}`);
    if (value !== undefined && value !== null) args.push(flags[name], String(value));
  }
  if (options.prefix && !options.redisUrl) args.push("--redis-url", REDIS_URL);
  const child = spawn(PYTHON, args, {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
  });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const started = new Promise((resolve, reject) => {
    let stdout = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      stdout += chunk;
      const line = stdout.split("\n");
      if (line.length > 1) resolve(Number(line[0]));
    });
    child.once("error", reject);
    exited.then(({ code, signal }) =>
      reject(new Error(`the server exited (${code ?? signal}) before it listened:\n${stderr}`)),
    );
  });
  try {
    const port = await deadline(started, 15000, `${PYTHON} ${args.join(" ")} to listen`);
    return new Server(child, port, exited, () => stderr);
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  }
}

/** Whether the Redis of WSROOM_TEST_REDIS_URL answers PING (for the tests that need it). */
export async function redisAnswers(url = REDIS_URL) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname || "127.0.0.1", port: Number(port) || 6379 });
    const done = (answer) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("error", () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")));
  });
}

/** Delete the Redis keys under `prefix`, the ones a test's servers created. */
export async function deletePrefix(prefix, url = REDIS_URL) {
  const child = spawn(PYTHON, ["-m", "tests.js.server", "--delete-prefix", prefix, "--redis-url", url], {
    cwd: ROOT,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const [code] = await deadline(
    new Promise((resolve) => child.once("exit", (...args) => resolve(args))),
    WAIT,
    `the keys of ${prefix} to be deleted`,
  );
  if (code !== 0) throw new Error(`deleting the keys of ${prefix} failed (${code})`);
}

/**
 * What one test starts, stopped when it ends: `h.server(options)`, `h.client(url, options)`.
 * Clients get the recording WebSocket (`client.wire`) and fast reconnects by default.
 */
export function harness(t) {
  const servers = [];
  const clients = [];
  const cleanups = [];
  t.after(async () => {
    for (const client of clients) client.close();
    await Promise.all(servers.map((server) => server.stop()));
    for (const cleanup of cleanups) await cleanup();
  });
  return {
    async server(options) {
      const server = await startServer(options);
      servers.push(server);
      return server;
    },
    client(url, options = {}) {
      const wire = recordingWebSocket();
      const client = connect(url, { WebSocket: wire.WebSocket, minDelay: 50, maxDelay: 200, ...options });
      Object.defineProperty(client, "wire", { value: wire });
      clients.push(client);
      return client;
    },
    /** A client that has received its `welcome`. */
    async open(url, options) {
      const client = this.client(url, options);
      await nextState(client, "open");
      return client;
    },
    cleanup(fn) {
      cleanups.push(fn);
    },
  };
}
