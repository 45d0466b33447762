// Reconnecting: after the server dies and comes back on the same port, the client re-joins
// its rooms with since/epoch and nothing is missed or shown twice; what is sent meanwhile is
// queued; leaving a room keeps it from being re-joined.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";

import { Client, WsroomError } from "../../src/wsroom/browser/wsroom.js";
import {
  WAIT,
  deadline,
  deletePrefix,
  freePort,
  harness,
  nextEvent,
  nextState,
  record,
  redisAnswers,
  startServer,
  unique,
  until,
} from "./helpers.mjs";

const T = { timeout: 30000 };
const redis = await redisAnswers();

/** The `join` frames the client sent on its `index`th socket. */
function joinsOn(client, index) {
  return client.wire.sockets[index].frames.filter((frame) => frame.type === "join");
}

describe("reconnecting", () => {
  test(
    "through Redis: the restarted server recovers what was missed, once, in order",
    { ...T, skip: redis ? false : "no Redis answers at WSROOM_TEST_REDIS_URL" },
    async (t) => {
      const h = harness(t);
      const prefix = `wsroom-jstest-${randomBytes(6).toString("hex")}`;
      h.cleanup(() => deletePrefix(prefix));
      const first = await h.server({ prefix });
      const other = await h.server({ prefix });
      const name = unique("recover");
      const alice = await h.open(first.url, { params: { name: "alice" } });
      const bob = await h.open(other.url, { params: { name: "bob" } });
      const room = await alice.join(name);
      const bobRoom = await bob.join(name);
      const epoch = room.epoch;
      const got = record(room, "message");
      const states = record(alice, "state");
      const gaps = record(room, "gap");
      for (const i of [1, 2, 3]) await bobRoom.send(`before ${i}`);
      await until(room, "message", () => got.length === 3, "the first 3 messages");

      const down = nextState(alice, "reconnecting");
      await first.kill();
      assert.equal((await down).code, 1006);
      // Posted while alice has no connection at all.
      for (const i of [4, 5, 6]) await bobRoom.send(`while down ${i}`);
      const back = nextState(alice, "open", 15000);
      const restarted = await h.server({ prefix, port: first.port });
      assert.equal(restarted.port, first.port);
      await back;
      await until(room, "message", () => got.length === 6, "the 3 missed messages", 10000);
      assert.equal(room.recovered, true);
      assert.equal(room.epoch, epoch);
      assert.equal(room.state, "joined");
      const [rejoin] = joinsOn(alice, alice.wire.sockets.length - 1);
      assert.deepEqual(rejoin, { type: "join", room: name, since: 3, epoch, ref: rejoin.ref });

      // The re-joined room is live: a new message arrives once.
      await bobRoom.send("after");
      await until(room, "message", () => got.length >= 7, "the live message");
      await alice.ping();
      await bob.ping();
      assert.deepEqual(
        got.map((m) => [m.id, m.data, m.replayed ?? false]),
        [
          [1, "before 1", false],
          [2, "before 2", false],
          [3, "before 3", false],
          [4, "while down 4", true],
          [5, "while down 5", true],
          [6, "while down 6", true],
          [7, "after", false],
        ],
      );
      assert.deepEqual(gaps, []);
      assert.equal(states[0][0], "reconnecting");
      assert.equal(states.at(-1)[0], "open");
      assert.ok(states.slice(1, -1).every(([state]) => state === "reconnecting"));
      await room.send("from alice again");
      assert.equal(room.offset, 8);
    },
  );

  test("in memory: the restarted server has a new epoch, and the client a gap", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const name = unique("epoch");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const room = await alice.join(name);
    await room.send("one");
    await room.send("two");
    const epoch = room.epoch;
    assert.equal(room.offset, 2);

    const down = nextState(alice, "reconnecting");
    await server.kill();
    await down;
    const gap = nextEvent(room, "gap", { timeout: 15000 });
    const members = nextEvent(room, "members", { timeout: 15000 });
    await h.server({ port: server.port });
    const [info] = await gap;
    assert.equal(info.reason, "not recovered");
    assert.equal(info.room, name);
    assert.notEqual(info.epoch, epoch);
    assert.equal(info.offset, 0);
    assert.deepEqual((await members)[0], ["alice"]);
    assert.equal(room.recovered, false);
    assert.equal(room.epoch, info.epoch);
    assert.equal(room.offset, 0);
    // The new epoch's ids start again at 1, and are not taken for duplicates.
    const got = record(room, "message");
    const ack = await room.send("three");
    assert.equal(ack.id, 1);
    assert.deepEqual(
      got.map((m) => [m.id, m.data]),
      [[1, "three"]],
    );
  });

  test("what is sent while reconnecting is queued, and sent after the re-joins", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const name = unique("queued");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const bob = await h.open(server.url, { params: { name: "bob" } });
    const room = await alice.join(name);
    const bobRoom = await bob.join(name);
    const got = record(bobRoom, "message");
    let queued;
    alice.once("state", (state) => {
      assert.equal(state, "reconnecting");
      // Before any new socket exists: these wait for one.
      queued = [room.send("q1"), alice.direct("bob", "d1"), room.send("q2"), alice.ping()];
    });
    // 1012 (service restart) is worth reconnecting after.
    await assert.rejects(alice.request("kick", 1012), { code: "disconnected", closeCode: 1012 });
    const [a1, d1, a2, rtt] = await deadline(Promise.all(queued), WAIT, "the queued frames");
    assert.deepEqual([a1.id, a2.id], [1, 2]);
    assert.ok(Number.isInteger(d1.id));
    assert.equal(typeof rtt, "number");
    await until(bobRoom, "message", () => got.length === 2, "the queued messages");
    assert.deepEqual(
      got.map((m) => m.data),
      ["q1", "q2"],
    );
    // On the new socket: the room's join first, then the queued frames in order.
    assert.deepEqual(
      alice.wire.sockets[1].frames.map((f) => f.type),
      ["join", "message", "direct", "message", "ping"],
    );
  });

  test("beyond maxQueue, sends while reconnecting reject with queue_full", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const client = await h.open(server.url, { params: { name: "alice" }, maxQueue: 3 });
    const room = await client.join(unique("full"));
    let sends;
    client.once("state", () => {
      sends = Array.from({ length: 5 }, (_, i) => room.send(i));
    });
    await assert.rejects(client.request("kick", 1012), { code: "disconnected" });
    const results = await deadline(Promise.allSettled(sends), WAIT, "the sends");
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled", "fulfilled", "rejected", "rejected"],
    );
    for (const { reason } of results.slice(3)) {
      assert.ok(reason instanceof WsroomError);
      assert.equal(reason.code, "queue_full");
      assert.equal(reason.room, room.name);
      // It was never sent.
      assert.ok(!client.wire.sent.some((frame) => frame.ref === reason.ref));
    }
    assert.deepEqual(
      results.slice(0, 3).map((r) => r.value.id),
      [1, 2, 3],
    );
  });

  test("a queued frame that timed out is never sent later", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const client = await h.open(server.url, { params: { name: "alice" }, timeout: 300 });
    const room = await client.join(unique("stale"));
    const down = nextState(client, "reconnecting");
    await server.kill();
    await down;
    const error = await room.send("stale").catch((e) => e);
    assert.ok(error instanceof WsroomError);
    assert.equal(error.code, "timeout");
    assert.match(error.message, /not sent/);
    assert.equal(error.room, room.name);
    const back = nextState(client, "open", 15000);
    await h.server({ port: server.port });
    await back;
    const ack = await room.send("fresh");
    assert.equal(ack.id, 1);
    assert.ok(!client.wire.sent.some((frame) => frame.ref === error.ref));
    assert.ok(!client.wire.sent.some((frame) => frame.data === "stale"));
  });
});

describe("leaving", () => {
  test("leave resolves, and the room is not re-joined after a reconnect", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const [kept, left] = [unique("kept"), unique("left")];
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const bob = await h.open(server.url, { params: { name: "bob" } });
    const keptRoom = await alice.join(kept);
    const leftRoom = await alice.join(left);
    const bobRoom = await bob.join(left);
    const presence = record(bobRoom, "presence");
    const leftEvents = record(leftRoom, "left");

    assert.equal(await leftRoom.leave(), undefined);
    assert.equal(leftRoom.state, "left");
    assert.deepEqual(leftEvents, [{ room: left, error: null }]);
    assert.equal(alice.room(left), undefined);
    assert.deepEqual([...alice.rooms.keys()], [kept]);
    await until(bobRoom, "presence", () => presence.length === 1, "alice's leave");
    assert.deepEqual(presence[0], { room: left, event: "leave", user: "alice" });
    // Leaving twice is harmless.
    await leftRoom.leave();

    const rejoined = nextEvent(keptRoom, "members");
    await assert.rejects(alice.request("kick", 1012), { code: "disconnected" });
    await rejoined;
    assert.deepEqual(
      joinsOn(alice, 1).map((f) => f.room),
      [kept],
    );
    await bob.ping();
    assert.equal(presence.length, 1);
  });

  test("leave while disconnected resolves at once, and the room is not re-joined", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const [kept, left] = [unique("kept"), unique("left")];
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const keptRoom = await alice.join(kept);
    const leftRoom = await alice.join(left);
    const down = nextState(alice, "reconnecting");
    await server.kill();
    await down;
    const leftEvent = nextEvent(leftRoom, "left");
    await deadline(leftRoom.leave(), 100, "a leave with nobody to tell");
    assert.equal(leftRoom.state, "left");
    assert.deepEqual((await leftEvent)[0], { room: left, error: null });
    const rejoined = nextEvent(keptRoom, "members", { timeout: 15000 });
    await h.server({ port: server.port });
    await rejoined;
    const last = alice.wire.sockets.length - 1;
    assert.deepEqual(
      joinsOn(alice, last).map((f) => f.room),
      [kept],
    );
    assert.ok(!alice.wire.sockets[last].frames.some((f) => f.type === "leave"));
  });
});

describe("corner cases", () => {
  test("a server shutting down (1001) is reconnected to", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const client = await h.open(server.url, { params: { name: "alice" } });
    const room = await client.join(unique("restart"));
    const down = nextState(client, "reconnecting");
    await server.stop();
    const info = await down;
    assert.equal(info.code, 1001);
    assert.equal(info.wasClean, true);
    const back = nextState(client, "open", 15000);
    await h.server({ port: server.port });
    await back;
    assert.equal((await room.send("back")).id, 1);
  });

  test("leave() before a first join was answered, while disconnected: the join settles", T, async (t) => {
    const h = harness(t);
    const port = await freePort();
    const client = h.client(`ws://127.0.0.1:${port}/ws`);
    const joining = client.join("lobby");
    const room = client.room("lobby");
    assert.equal(room.state, "joining");
    await room.leave();
    assert.equal(room.state, "left");
    const error = await deadline(joining.catch((e) => e), 1000, "the join to settle");
    assert.ok(error instanceof WsroomError);
    assert.equal(error.code, "not_joined");
    assert.equal(error.room, "lobby");
  });

  test("join() while the room is being left joins it again", T, async (t) => {
    const h = harness(t);
    const server = await h.server();
    const name = unique("again");
    const client = await h.open(server.url, { params: { name: "alice" } });
    const first = await client.join(name);
    const leaving = first.leave();
    assert.equal(first.state, "leaving");
    const second = await client.join(name);
    await leaving;
    assert.equal(first.state, "left");
    assert.notEqual(second, first);
    assert.equal(second.state, "joined");
    assert.equal(client.room(name), second);
    // The server has the client in the room.
    assert.equal((await second.send("still in")).id, 1);
  });
});

describe("joining many rooms within the server's rate limit", () => {
  test("a join refused with rate_limited is sent again after a pause, and resolves", T, async (t) => {
    const h = harness(t);
    // Two frames at once, then one every 200 ms.
    const server = await h.server({ rate: 5, burst: 2 });
    const client = await h.open(server.url, { params: { name: "alice" } });
    const names = [unique("a"), unique("b"), unique("c"), unique("d")];
    const rooms = await Promise.all(names.map((name) => client.join(name)));
    assert.deepEqual(rooms.map((room) => room.state), ["joined", "joined", "joined", "joined"]);
    const joins = joinsOn(client, 0);
    assert.ok(joins.length > names.length, `${joins.length} joins: some were sent again`);
    assert.deepEqual(new Set(joins.map((frame) => frame.room)), new Set(names));
    assert.equal(client.state, "open");
  });

  test("a client in 120 rooms (the server allows 128) joins and re-joins them all without being closed for abuse", { timeout: 60000 }, async (t) => {
    const h = harness(t);
    // The server's default per-connection limit: 50 frames a second, bursts of 100; it
    // closes a connection after 20 rate_limited answers within 10 seconds.
    const server = await h.server({ rate: 50, burst: 100 });
    const client = await h.open(server.url, { params: { name: "many" }, timeout: 30000 });
    const states = record(client, "state");
    const names = Array.from({ length: 120 }, (_, i) => `many-${i}`);
    const rooms = await Promise.all(names.map((name) => client.join(name)));
    assert.ok(rooms.every((room) => room.state === "joined"));
    // More joins than rooms: the server refused some for the rate, and they came again.
    assert.ok(joinsOn(client, 0).length > names.length, `${joinsOn(client, 0).length} joins`);

    const rejoined = Promise.all(rooms.map((room) => new Promise((resolve) => room.once("members", resolve))));
    client.reconnect();
    await rejoined;
    assert.ok(rooms.every((room) => room.state === "joined"));
    assert.equal(client.state, "open");
    assert.deepEqual(states.filter((state) => state === "closed"), []);
    assert.deepEqual(new Set(joinsOn(client, 1).map((frame) => frame.room)), new Set(names));
  });
});

test("a path without a page to resolve it against is refused with a message that says what to give", T, () => {
  assert.throws(
    () => new Client("/ws", { WebSocket: class {} }),
    (error) => error instanceof TypeError && /give a full one such as ws:\/\//.test(error.message),
  );
});

test("a first join the server keeps answering with internal_error rejects with that error at its timeout", T, async (t) => {
  const h = harness(t);
  const server = await h.server({});
  const client = await h.open(server.url, { params: { name: "alice" }, timeout: 2500 });
  const name = unique("broken");
  await assert.rejects(client.join(name), (error) => {
    assert.ok(error instanceof WsroomError);
    assert.equal(error.code, "internal_error");
    assert.equal(error.room, name);
    return true;
  });
  // Sent again after a pause, not given up at the first "not now".
  assert.ok(joinsOn(client, 0).length >= 2, `${joinsOn(client, 0).length} joins`);
  assert.equal(client.room(name), undefined);
  assert.equal(client.state, "open");
});
