// Requests that time out, the heartbeat, and close(): what it rejects, and that it leaves
// nothing behind that keeps Node running.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import path from "node:path";

import { WsroomError } from "../../src/wsroom/browser/wsroom.js";
import { ROOT, WAIT, deadline, freePort, harness, nextState, record, startServer, unique, until } from "./helpers.mjs";

const T = { timeout: 15000 };

describe("requests and close()", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("an answer that does not come in time rejects with timeout; a late one is ignored", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" }, timeout: 250 });
    const room = await client.join(unique("slow"));
    const socket = client.wire.sockets[0];
    const started = performance.now();
    const error = await room.request("slow", 0.8).catch((e) => e);
    const waited = performance.now() - started;
    assert.ok(error instanceof WsroomError);
    assert.equal(error.code, "timeout");
    assert.equal(error.room, room.name);
    assert.match(error.message, /no answer/);
    assert.ok(waited >= 240 && waited < 750, `rejected after ${waited} ms`);
    const frame = client.wire.sent.find((f) => f.ref === error.ref);
    assert.equal(frame.type, "slow");
    // The server's ack comes after all; the client drops it and goes on.
    const errors = record(client, "error");
    const [late] = await new Promise((resolve) =>
      socket.on("message", function listener(data) {
        const answer = JSON.parse(data.toString());
        if (answer.ref === error.ref) {
          socket.off("message", listener);
          resolve([answer]);
        }
      }),
    );
    assert.equal(late.type, "ack");
    assert.ok((await client.ping()) >= 0);
    assert.deepEqual(errors, []);
    assert.equal(client.state, "open");
  });

  test("a join answered too late is left again, unless the room was joined anew meanwhile", T, async (t) => {
    const h = harness(t);
    const name = unique("slowjoin");
    const client = await h.open(server.url, { params: { name: "alice" }, timeout: 200 });
    const bob = await h.open(server.url, { params: { name: "bob" } });
    const bobRoom = await bob.join(name);
    const presence = record(bobRoom, "presence");
    await assert.rejects(client.join(name, { data: 0.5 }), { code: "timeout", room: name });
    assert.equal(client.room(name), undefined);
    // The server joins alice after all: the client answers with a leave.
    await until(bobRoom, "presence", () => presence.length === 2, "alice's join and leave");
    assert.deepEqual(
      presence.map((p) => [p.event, p.user]),
      [
        ["join", "alice"],
        ["leave", "alice"],
      ],
    );
    assert.deepEqual(
      client.wire.sent.filter((f) => f.room === name).map((f) => f.type),
      ["join", "leave"],
    );

    // This time the room is joined again before the late answer comes: it stays joined.
    // Its answer comes 0.5 s after the timeout, and the second join's 0.5 s before its own.
    const late = await h.open(server.url, { params: { name: "carol" }, timeout: 1000 });
    await assert.rejects(late.join(name, { data: 1.5 }), { code: "timeout" });
    const room = await late.join(name); // the server answers it right after the slow one
    assert.equal(room.state, "joined");
    assert.equal((await room.send("carol is in")).id, 1);
    assert.deepEqual(
      late.wire.sent.filter((f) => f.room === name).map((f) => f.type),
      ["join", "join", "message"],
    );
  });

  test("close(): pending requests reject with closed, no reconnect follows", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    const room = await client.join(unique("closing"));
    const states = record(client, "state");
    const left = record(room, "left");
    const pending = room.request("slow", 0.5);
    const joining = client.join(unique("joining"));
    client.close();
    for (const promise of [pending, joining]) {
      const error = await promise.catch((e) => e);
      assert.ok(error instanceof WsroomError);
      assert.equal(error.code, "closed");
    }
    assert.equal(client.state, "closed");
    assert.deepEqual(
      states.map(([state]) => state),
      ["closed"],
    );
    assert.deepEqual(states[0][1], { code: 1000, reason: "", error: null });
    assert.equal(left.length, 1);
    assert.equal(left[0].error.code, "closed");
    assert.equal(room.state, "left");
    assert.equal(client.rooms.size, 0);
    await assert.rejects(room.send("after close"), { code: "not_joined" });
    await assert.rejects(client.request("whoami"), { code: "closed" });
    await assert.rejects(client.direct("bob", 1), { code: "closed" });
    // Closing twice is harmless; nothing more happens.
    client.close();
    const socket = client.wire.sockets[0];
    if (socket.readyState !== socket.CLOSED) await new Promise((resolve) => socket.once("close", resolve));
    assert.equal(client.wire.sockets.length, 1);
    assert.equal(states.length, 1);
  });

  test("close() while connecting and while reconnecting", T, async (t) => {
    const h = harness(t);
    const connecting = h.client(server.url);
    const states = record(connecting, "state");
    connecting.close();
    assert.equal(connecting.state, "closed");
    assert.deepEqual(
      states.map(([state]) => state),
      ["closed"],
    );

    const port = await freePort();
    const retrying = h.client(`ws://127.0.0.1:${port}/ws`);
    await nextState(retrying, "reconnecting");
    retrying.close();
    assert.equal(retrying.state, "closed");
  });
});

/** Run `script` (an ES module) in a child `node`; resolves with its exit and its output. */
async function runNode(script, timeout = WAIT) {
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  try {
    const result = await deadline(exited, timeout, "the node child to exit by itself");
    return { ...result, stdout, stderr };
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`${error.message}\nstdout: ${stdout}\nstderr: ${stderr}`);
  }
}

const IMPORTS = `
  import { WebSocket } from ${JSON.stringify(pathToFileURL(path.join(ROOT, "tests/js/node_modules/ws/wrapper.mjs")).href)};
  import { connect } from ${JSON.stringify(pathToFileURL(path.join(ROOT, "src/wsroom/browser/wsroom.js")).href)};
`;

describe("a Node process using wsroom.js", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("exits by itself once the client is closed: no timer or socket is left", T, async () => {
    const script = `${IMPORTS}
      const client = connect(${JSON.stringify(server.url)}, { WebSocket, params: { name: "child" } });
      const room = await client.join("exit-test");
      await room.send("bye");
      await client.ping();
      client.close();
      console.log("closed", performance.now());
    `;
    const { code, signal, stdout, stderr } = await runNode(script);
    assert.equal(code, 0, stderr);
    assert.equal(signal, null);
    assert.match(stdout, /^closed /);
    assert.equal(stderr, "");
  });

  test("exits by itself after close() while connecting or reconnecting", T, async () => {
    const port = await freePort();
    const script = `${IMPORTS}
      const early = connect(${JSON.stringify(server.url)}, { WebSocket });
      early.close();
      const retrying = connect("ws://127.0.0.1:${port}/ws", { WebSocket, minDelay: 10 });
      await new Promise((resolve) => retrying.once("state", resolve));
      retrying.close();
      console.log("closed");
    `;
    const { code, stdout, stderr } = await runNode(script);
    assert.equal(code, 0, stderr);
    assert.equal(stdout, "closed\n");
    assert.equal(stderr, "");
  });
});

describe("a server that accepts TCP but never answers the upgrade", () => {
  let server;
  let port;
  const sockets = new Set();
  before(async () => {
    server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = server.address().port;
  });
  after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });

  test("close() and reconnect() during the handshake do not crash Node", T, async () => {
    // Node's `ws` emits an 'error' when a socket still in its handshake is closed: with no
    // listener left on it, that is an uncaught exception.
    const script = `${IMPORTS}
      let created;
      class Watched extends WebSocket {
        constructor(...args) {
          super(...args);
          created?.();
        }
      }
      const handshake = () => new Promise((resolve) => (created = resolve)).then(() => Promise.resolve());
      const url = "ws://127.0.0.1:${port}/ws";
      const closing = connect(url, { WebSocket: Watched });
      await handshake();
      closing.close();
      const reconnecting = connect(url, { WebSocket: Watched });
      await handshake();
      const next = handshake();
      reconnecting.reconnect();
      await next;
      reconnecting.close();
      await new Promise((resolve) => setImmediate(resolve));
      console.log("survived");
    `;
    const { code, stdout, stderr } = await runNode(script);
    assert.equal(stderr, "");
    assert.equal(code, 0);
    assert.equal(stdout, "survived\n");
  });

  test("an upgrade that never completes is given up after `timeout`, and retried", T, async (t) => {
    const h = harness(t);
    const client = h.client(`ws://127.0.0.1:${port}/ws`, { timeout: 200, minDelay: 20 });
    const started = performance.now();
    const info = await nextState(client, "reconnecting", 3000);
    const waited = performance.now() - started;
    assert.ok(waited >= 190, `gave up after ${waited} ms`);
    assert.equal(info.code, 1006);
    assert.equal(info.attempt, 1);
    await until(client, "state", () => client.wire.sockets.length === 2, "a second attempt");
    client.close();
    assert.equal(client.state, "closed");
  });
});

describe("heartbeat", () => {
  const heartbeat = 0.3;
  let server;
  before(async () => {
    server = await startServer({ heartbeat });
  });
  after(async () => {
    await server.stop();
  });

  test("an idle client is not closed: wsroom.js pings within the heartbeat", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "idle" } });
    assert.equal(client.heartbeat, heartbeat);
    const room = await client.join(unique("idle"));
    const states = record(client, "state");
    // Idle for longer than the server allows (2 heartbeats without a frame): the idling
    // is the test, so this wait is a fixed time on purpose. The server would close at once.
    const idle = 3 * heartbeat * 1000;
    const closing = nextState(client, "closed", idle).then(
      () => assert.fail("the server closed an idle client"),
      () => {},
    );
    await closing;
    assert.deepEqual(states, []);
    const pings = client.wire.sockets[0].frames.filter((f) => f.type === "ping");
    assert.ok(pings.length >= 3, `${pings.length} pings`);
    const ack = await room.send("still here");
    assert.equal(ack.id, 1);
    assert.equal(client.state, "open");
  });

  test("without its pings, the server closes it (1008): the heartbeat is real, and a new connection puts it right", T, async (t) => {
    // A client that went quiet (a background tab whose timers the browser throttled) is
    // closed with 1008 "heartbeat timeout": unlike other 1008s, that one is retried.
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "silent" }, pingInterval: 0 });
    const room = await client.join("quiet");
    const info = await nextState(client, "reconnecting", 3000);
    assert.equal(info.code, 1008);
    assert.equal(info.reason, "heartbeat timeout");
    assert.deepEqual(
      client.wire.sockets[0].frames.map((f) => f.type),
      ["join"],
    );
    await nextState(client, "open", 3000);
    assert.equal(room.state, "joining");
    const members = await new Promise((resolve) => room.once("members", resolve));
    assert.deepEqual(members, ["silent"]);
    assert.equal(room.state, "joined");
    client.close();
  });
});
