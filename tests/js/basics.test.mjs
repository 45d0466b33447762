// wsroom.js against a real wsroom server: connecting, rooms, messages, presence, direct
// messages, custom requests, application events and ping.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  CLIENT_ERROR_CODES,
  Client,
  Room,
  SERVER_ERROR_CODES,
  SUBPROTOCOLS,
  VERSION,
} from "../../src/wsroom/browser/wsroom.js";
import { harness, nextEvent, nextState, record, startServer, unique, until } from "./helpers.mjs";

const T = { timeout: 15000 };

describe("a client of a wsroom server", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("the module's constants", T, () => {
    assert.match(VERSION, /^\d+\.\d+\.\d+/);
    assert.deepEqual([...SUBPROTOCOLS], ["wsroom.v1.batch", "wsroom.v1"]);
    // Every code of the protocol's table, and nothing else.
    assert.deepEqual(
      [...SERVER_ERROR_CODES].sort(),
      [
        "forbidden",
        "internal_error",
        "invalid_json",
        "invalid_message",
        "not_joined",
        "rate_limited",
        "room_full",
        "unknown_type",
        "user_offline",
      ],
    );
    assert.deepEqual([...CLIENT_ERROR_CODES].sort(), ["closed", "disconnected", "queue_full", "refused", "timeout"]);
  });

  test("connects: connecting, then open with the welcome's fields", T, async (t) => {
    const h = harness(t);
    const client = h.client(server.url, { params: { name: "alice" } });
    assert.ok(client instanceof Client);
    assert.equal(client.state, "connecting");
    assert.equal(client.user, null);
    assert.equal(client.connectionId, null);
    const states = record(client, "state");
    const [welcome] = await nextEvent(client, "welcome");
    assert.equal(client.state, "open");
    assert.deepEqual(
      states.map(([state]) => state),
      ["open"],
    );
    assert.deepEqual(states[0][1], { user: "alice", connection: welcome.connection });
    assert.equal(welcome.type, "welcome");
    assert.equal(welcome.protocol, 1);
    assert.equal(welcome.heartbeat, null);
    assert.equal(client.user, "alice");
    assert.match(client.connectionId, /^[0-9a-f]{16}$/);
    assert.equal(client.connectionId, welcome.connection);
    assert.equal(client.heartbeat, null);
    // The wsroom server selects batched frames whenever they are offered.
    assert.deepEqual(client.wire.sockets[0].offered, ["wsroom.v1.batch", "wsroom.v1"]);
    assert.equal(client.protocol, "wsroom.v1.batch");
  });

  test("params may be a function, called before each attempt", T, async (t) => {
    const h = harness(t);
    let calls = 0;
    const client = h.client(server.url, {
      params: async () => {
        calls += 1;
        return { name: `carol${calls}` };
      },
    });
    await nextState(client, "open");
    assert.equal(client.user, "carol1");
    client.request("kick", 1012).catch(() => {});
    await nextState(client, "reconnecting");
    await nextState(client, "open");
    assert.equal(client.user, "carol2");
    assert.equal(calls, 2);
  });

  test("params that fail are reported, and retried", T, async (t) => {
    const h = harness(t);
    let calls = 0;
    const client = h.client(server.url, {
      params: () => {
        calls += 1;
        if (calls === 1) throw new Error("no token yet");
        return { name: "dave" };
      },
    });
    const reported = nextEvent(client, "error");
    const retrying = nextState(client, "reconnecting");
    const opened = nextState(client, "open");
    const [error] = await reported;
    assert.equal(error.message, "no token yet");
    assert.equal((await retrying).reason, "params failed");
    await opened;
    assert.equal(client.user, "dave");
  });

  test("join resolves with the room: members, history, recovered; send resolves with the ack", T, async (t) => {
    const h = harness(t);
    const name = unique("lobby");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const room = await alice.join(name);
    assert.ok(room instanceof Room);
    assert.equal(room.name, name);
    assert.equal(room.state, "joined");
    assert.deepEqual(room.members, ["alice"]);
    assert.deepEqual(room.history, []);
    assert.equal(room.recovered, null);
    assert.equal(room.offset, 0);
    assert.match(room.epoch, /^\S+$/);
    assert.equal(alice.room(name), room);
    assert.deepEqual([...alice.rooms.keys()], [name]);
    // Joining again gives the same room.
    assert.equal(await alice.join(name), room);

    // The sender's own copy comes before its ack.
    const order = [];
    room.on("message", (message) => order.push(["message", message]));
    const ack = await room.send({ text: "hi" }).then((answer) => {
      order.push(["ack", answer]);
      return answer;
    });
    assert.equal(ack.type, "ack");
    assert.equal(ack.id, 1);
    assert.ok(Number.isInteger(ack.ref));
    const sent = alice.wire.sent.find((frame) => frame.ref === ack.ref);
    assert.deepEqual(sent, { type: "message", room: name, data: { text: "hi" }, ref: ack.ref });
    assert.deepEqual(
      order.map(([kind]) => kind),
      ["message", "ack"],
    );
    const message = order[0][1];
    assert.equal(message.type, "message");
    assert.equal(message.room, name);
    assert.equal(message.id, 1);
    assert.equal(message.from, "alice");
    assert.deepEqual(message.data, { text: "hi" });
    assert.ok(Math.abs(message.ts - Date.now()) < 60000);
    assert.equal(room.offset, 1);
  });

  test("a later joiner gets the history in room.history, not as message events", T, async (t) => {
    const h = harness(t);
    const name = unique("history");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const room = await alice.join(name);
    for (const text of ["one", "two", "three"]) await room.send(text);

    const bob = await h.open(server.url, { params: { name: "bob" } });
    const bobRoom = await bob.join(name);
    assert.deepEqual(
      bobRoom.history.map((m) => [m.id, m.from, m.data]),
      [
        [1, "alice", "one"],
        [2, "alice", "two"],
        [3, "alice", "three"],
      ],
    );
    assert.equal(bobRoom.offset, 3);
    const got = record(bobRoom, "message");
    await room.send("four");
    await until(bobRoom, "message", () => got.length === 1, "the live message");
    assert.deepEqual(
      got.map((m) => [m.id, m.data]),
      [[4, "four"]],
    );
    // Answers come in order: anything else for bob would have arrived before this pong.
    await bob.ping();
    assert.equal(got.length, 1);
  });

  test("message events reach every member, in order", T, async (t) => {
    const h = harness(t);
    const name = unique("chat");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const bob = await h.open(server.url, { params: { name: "bob" } });
    const aliceRoom = await alice.join(name);
    const bobRoom = await bob.join(name);
    const got = record(bobRoom, "message");
    const acks = await Promise.all(Array.from({ length: 20 }, (_, i) => aliceRoom.send({ i })));
    assert.deepEqual(
      acks.map((a) => a.id),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    await until(bobRoom, "message", () => got.length === 20, "20 messages");
    assert.deepEqual(
      got.map((m) => [m.id, m.from, m.data.i]),
      Array.from({ length: 20 }, (_, i) => [i + 1, "alice", i]),
    );
  });

  test("presence join and leave, and members events", T, async (t) => {
    const h = harness(t);
    const name = unique("presence");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const aliceRoom = await alice.join(name);
    const presence = record(aliceRoom, "presence");
    const members = record(aliceRoom, "members");

    const bob = await h.open(server.url, { params: { name: "bob" } });
    const bobRoom = await bob.join(name);
    assert.deepEqual([...bobRoom.members].sort(), ["alice", "bob"]);
    await until(aliceRoom, "presence", () => presence.length === 1, "bob's join");
    assert.deepEqual(presence[0], { room: name, event: "join", user: "bob" });
    assert.deepEqual(members, [["alice", "bob"]]);
    assert.deepEqual(aliceRoom.members, ["alice", "bob"]);

    // A second connection of bob's is no news; the last one leaving is.
    const bob2 = await h.open(server.url, { params: { name: "bob" } });
    await bob2.join(name);
    await bobRoom.leave();
    assert.equal(bobRoom.state, "left");
    assert.equal(bob.room(name), undefined);
    bob2.close();
    await until(aliceRoom, "presence", () => presence.length === 2, "bob's leave");
    assert.deepEqual(presence[1], { room: name, event: "leave", user: "bob" });
    assert.deepEqual(members.at(-1), ["alice"]);
    assert.deepEqual(aliceRoom.members, ["alice"]);
    assert.equal(members.length, 2);
  });

  test("direct messages: ack with an id, a direct event for the recipient", T, async (t) => {
    const h = harness(t);
    const bobName = unique("bob");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const bob = await h.open(server.url, { params: { name: bobName } });
    const received = nextEvent(bob, "direct");
    const ack = await alice.direct(bobName, { text: "psst" });
    assert.equal(ack.type, "ack");
    assert.ok(Number.isInteger(ack.id));
    const [direct] = await received;
    assert.equal(direct.type, "direct");
    assert.equal(direct.id, ack.id);
    assert.equal(direct.from, "alice");
    assert.deepEqual(direct.data, { text: "psst" });
    assert.equal(typeof direct.ts, "number");

    // To oneself: every connection of the user, the sender's included.
    const own = nextEvent(bob, "direct");
    await bob.direct(bobName, "note to self");
    assert.equal((await own)[0].data, "note to self");
  });

  test("custom requests are acknowledged; application events reach the room and the client", T, async (t) => {
    const h = harness(t);
    const name = unique("custom");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const bob = await h.open(server.url, { params: { name: "bob" } });
    const aliceRoom = await alice.join(name);
    const bobRoom = await bob.join(name);

    // A room's application event (Room.broadcast_event) goes to the room's `event` listeners.
    const typing = nextEvent(bobRoom, "event");
    const ack = await aliceRoom.request("typing", { draft: true });
    assert.equal(ack.type, "ack");
    assert.equal(ack.id, undefined);
    const sent = alice.wire.sent.find((frame) => frame.ref === ack.ref);
    assert.deepEqual(sent, { type: "typing", room: name, data: { draft: true }, ref: ack.ref });
    assert.deepEqual((await typing)[0], { type: "typing", room: name, data: { user: "alice" } });

    // An event without a room (Connection.send_event) goes to the client's `event` listeners,
    // before the request's ack.
    const order = [];
    alice.once("event", (event) => order.push(event));
    const answer = await alice.request("whoami");
    order.push(answer);
    assert.deepEqual(order[0], { type: "you", data: { user: "alice", connection: alice.connectionId } });
    assert.equal(order[1].type, "ack");

    // manager.send_all reaches every client.
    const events = [nextEvent(alice, "event"), nextEvent(bob, "event")];
    await bob.request("announce", "maintenance at noon");
    for (const [event] of await Promise.all(events)) {
      assert.deepEqual(event, { type: "announcement", data: "maintenance at noon" });
    }

    assert.throws(() => alice.on("event", "not a function"), TypeError);
    await assert.rejects(alice.request("not a type"), TypeError);
  });

  test("frames the server queued together arrive as batches, handled one by one in order", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url);
    assert.equal(client.protocol, "wsroom.v1.batch");
    const messages = [];
    client.wire.sockets[0].addEventListener("message", (message) => messages.push(message.data));
    const events = [];
    client.on("event", (event) => events.push(event));
    const ack = await client.request("flood", 300);
    // Every event before the ack of the request that queued them, in order.
    assert.equal(ack.type, "ack");
    assert.deepEqual(
      events.map((event) => event.data),
      [...Array(300).keys()],
    );
    const values = messages.map((data) => JSON.parse(data));
    const batches = values.filter(Array.isArray);
    assert.ok(batches.length > 0, "300 frames queued at once travel in batches");
    assert.ok(batches.every((batch) => batch.length > 1));
    // 300 events and the ack, whatever the packing.
    assert.equal(
      values.reduce((total, value) => total + (Array.isArray(value) ? value.length : 1), 0),
      301,
    );
  });

  test("ping resolves with the round-trip time", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url);
    const rtt = await client.ping();
    assert.equal(typeof rtt, "number");
    assert.ok(rtt >= 0 && rtt < 2000, `rtt ${rtt}`);
    const ping = client.wire.sent.at(-1);
    assert.equal(ping.type, "ping");
    assert.ok(Number.isInteger(ping.ref));
  });

  test("a listener that throws does not break the client", T, async (t) => {
    const h = harness(t);
    const reported = [];
    const original = console.error;
    console.error = (...args) => reported.push(args);
    t.after(() => {
      console.error = original;
    });
    const client = await h.open(server.url, { params: { name: "alice" } });
    const room = await client.join(unique("throw"));
    room.on("message", () => {
      throw new Error("a listener's bug");
    });
    const got = record(room, "message");
    await room.send(1);
    await room.send(2);
    assert.deepEqual(
      got.map((m) => m.data),
      [1, 2],
    );
    assert.equal(reported.length, 2);
    console.error = original;
  });
});

test("a custom handler's answer comes back as the ack's data, in a room and without one", { timeout: 20000 }, async (t) => {
  const h = harness(t);
  const server = await h.server({});
  const alice = await h.open(server.url, { params: { name: "alice" } });
  const bob = await h.open(server.url, { params: { name: "bob" } });
  const name = unique("count");
  const room = await alice.join(name);
  await bob.join(name);
  const answer = await room.request("count", { why: "test" });
  assert.deepEqual(answer.data, { members: ["alice", "bob"], asked: { why: "test" } });
  // Falsy answers are answers too; a handler that returns nothing gives an ack without data.
  assert.equal((await alice.request("echo", 0)).data, 0);
  assert.deepEqual((await alice.request("echo", [])).data, []);
  assert.equal("data" in (await alice.request("echo")), false);
});
