// Batched frames (subprotocol wsroom.v1.batch: a JSON array of server frames in one text
// frame). A small `ws` server plays the server here, so that batches come exactly as each
// test needs them (the wsroom server batches only what waits in a connection's queue).

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocketServer } from "ws";

import { harness, record, until } from "./helpers.mjs";

const T = { timeout: 10000 };

/** A hand-written server: selects `protocol` when offered, welcomes, answers joins via `onJoin`. */
async function fakeServer(t, protocol, onJoin) {
  const offered = [];
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (protocols) => {
      offered.push([...protocols]);
      return protocols.has(protocol) ? protocol : false;
    },
  });
  await new Promise((resolve) => wss.once("listening", resolve));
  wss.on("connection", (ws) => {
    ws.send(JSON.stringify({ type: "welcome", connection: "c0ffee", user: "alice", protocol: 1, heartbeat: null }));
    ws.on("message", (data) => {
      const frame = JSON.parse(data.toString());
      if (frame.type === "join") onJoin(ws, frame);
      if (frame.type === "ping") ws.send(JSON.stringify({ type: "pong", ref: frame.ref }));
    });
  });
  t.after(async () => {
    for (const ws of wss.clients) ws.terminate();
    await new Promise((resolve) => wss.close(resolve));
  });
  return { url: `ws://127.0.0.1:${wss.address().port}/ws`, offered };
}

function joined(frame, history = []) {
  return { type: "joined", room: frame.room, ref: frame.ref, members: ["alice"], history, offset: 0, epoch: "e1" };
}

function message(room, id, data) {
  return { type: "message", room, id, from: "bob", data, ts: Date.now() };
}

test("a batch [joined, message, message]: a listener added after await join() gets both", T, async (t) => {
  const server = await fakeServer(t, "wsroom.v1.batch", (ws, frame) => {
    ws.send(JSON.stringify([joined(frame), message(frame.room, 1, "first"), message(frame.room, 2, "second")]));
  });
  const h = harness(t);
  const client = h.client(server.url);
  const room = await client.join("lobby");
  const got = record(room, "message");
  assert.equal(client.protocol, "wsroom.v1.batch");
  assert.deepEqual(server.offered, [["wsroom.v1.batch", "wsroom.v1"]]);
  await until(room, "message", () => got.length === 2, "both messages");
  assert.deepEqual(
    got.map((m) => [m.id, m.data]),
    [
      [1, "first"],
      [2, "second"],
    ],
  );
  assert.equal(room.offset, 2);
});

test("a batch is handled in order, and holds any server frame", T, async (t) => {
  const server = await fakeServer(t, "wsroom.v1.batch", (ws, frame) => {
    ws.send(JSON.stringify([joined(frame, [message(frame.room, 1, "old")])]));
    ws.send(
      JSON.stringify([
        message(frame.room, 1, "a duplicate of the history"),
        message(frame.room, 2, "two"),
        { type: "presence", room: frame.room, event: "join", user: "bob" },
        { type: "typing", room: frame.room, data: { user: "bob" } },
        message(frame.room, 3, "three"),
        { type: "direct", id: 9, from: "bob", data: "psst", ts: Date.now() },
        { type: "nonsense-without-meaning" },
        "not a frame",
        message(frame.room, 4, "four"),
      ]),
    );
  });
  const h = harness(t);
  const client = h.client(server.url);
  const room = await client.join("lobby");
  assert.deepEqual(
    room.history.map((m) => m.data),
    ["old"],
  );
  const order = [];
  for (const event of ["message", "presence", "event"]) room.on(event, (value) => order.push([event, value]));
  client.on("direct", (value) => order.push(["direct", value]));
  await until(room, "message", () => order.some(([, value]) => value.id === 4), "the last message");
  assert.deepEqual(
    order.map(([event, value]) => [event, value.data ?? value.user]),
    [
      ["message", "two"],
      ["presence", "bob"],
      ["event", { user: "bob" }],
      ["message", "three"],
      ["direct", "psst"],
      ["message", "four"],
    ],
  );
  assert.deepEqual(room.members, ["alice", "bob"]);
});

test("without batches, frames of one read still wait for the code that awaits join()", T, async (t) => {
  const server = await fakeServer(t, "wsroom.v1", (ws, frame) => {
    // Three frames written at once: they usually arrive in the same read.
    ws.send(JSON.stringify(joined(frame)));
    ws.send(JSON.stringify(message(frame.room, 1, "first")));
    ws.send(JSON.stringify(message(frame.room, 2, "second")));
  });
  const h = harness(t);
  const client = h.client(server.url);
  const room = await client.join("lobby");
  const got = record(room, "message");
  assert.equal(client.protocol, "wsroom.v1");
  await until(room, "message", () => got.length === 2, "both messages");
  assert.deepEqual(
    got.map((m) => m.id),
    [1, 2],
  );
});

test("a gap frame moves the room's offset and epoch: the new epoch's ids are not duplicates", T, async (t) => {
  const server = await fakeServer(t, "wsroom.v1", (ws, frame) => {
    ws.send(JSON.stringify({ ...joined(frame, [message(frame.room, 5, "five")]), offset: 5 }));
    // Redis lost the room: its ids restart from 1 in a new epoch.
    ws.send(JSON.stringify({ type: "gap", room: frame.room, epoch: "e2", offset: 0 }));
    ws.send(JSON.stringify(message(frame.room, 1, "one, again")));
  });
  const h = harness(t);
  const client = h.client(server.url);
  const room = await client.join("lobby");
  assert.equal(room.offset, 5);
  const gaps = record(room, "gap");
  const got = record(room, "message");
  await until(room, "message", () => got.length === 1, "the first message of the new epoch");
  assert.deepEqual(gaps, [{ room: "lobby", epoch: "e2", offset: 0, reason: "gap" }]);
  assert.equal(room.epoch, "e2");
  assert.equal(room.offset, 1);
  assert.deepEqual(
    got.map((m) => [m.id, m.data]),
    [[1, "one, again"]],
  );
});
