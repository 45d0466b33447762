// Every error code a client can bring about through wsroom.js's API reaches it as a
// WsroomError with the code, and the ref of the frame that failed; an error frame that
// answers no request goes to the client's `error` event.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { WsroomError } from "../../src/wsroom/browser/wsroom.js";
import { WAIT, deadline, harness, startServer, unique } from "./helpers.mjs";

const T = { timeout: 15000 };

/** The WsroomError `promise` rejects with, checked against the frame the client sent. */
async function refusal(promise, client, code, { type, room = null } = {}) {
  const error = await promise.then(
    (value) => assert.fail(`expected ${code}, got ${JSON.stringify(value)}`),
    (error) => error,
  );
  assert.ok(error instanceof WsroomError, `not a WsroomError: ${error}`);
  assert.equal(error.name, "WsroomError");
  assert.equal(error.code, code, error.message);
  assert.ok(Number.isInteger(error.ref), `ref ${error.ref}`);
  const frame = client.wire.sent.find((sent) => sent.ref === error.ref);
  assert.ok(frame, `no frame was sent with the ref ${error.ref}`);
  if (type) assert.equal(frame.type, type);
  assert.equal(error.room, room);
  assert.equal(error.status, null);
  assert.equal(error.closeCode, null);
  assert.equal(typeof error.message, "string");
  return error;
}

describe("server errors", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("not_joined: a custom frame for a room not joined", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    const name = unique("elsewhere");
    await refusal(client.request("typing", null, { room: name }), client, "not_joined", { type: "typing", room: name });

    // Sending to a room left is refused by the client itself: no frame, no ref.
    const room = await client.join(unique("left"));
    await room.leave();
    const error = await room.send("late").catch((e) => e);
    assert.ok(error instanceof WsroomError);
    assert.equal(error.code, "not_joined");
    assert.equal(error.ref, null);
    assert.equal(error.room, room.name);
    await assert.rejects(room.request("typing"), { code: "not_joined" });
  });

  test("forbidden: a join the room's can_join refuses, or a room that does not exist", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    const name = unique("private");
    await refusal(client.join(name), client, "forbidden", { type: "join", room: name });
    assert.equal(client.room(name), undefined);
    const missing = unique("nosuch");
    await refusal(client.join(missing), client, "forbidden", { type: "join", room: missing });
    // The join's data reaches can_join.
    const room = await client.join(name, { data: "secret" });
    assert.equal(room.state, "joined");
    const join = client.wire.sent.at(-1);
    assert.deepEqual(join, { type: "join", room: name, data: "secret", ref: join.ref });
  });

  test("room_full", T, async (t) => {
    const h = harness(t);
    const name = unique("tiny");
    const alice = await h.open(server.url, { params: { name: "alice" } });
    const bob = await h.open(server.url, { params: { name: "bob" } });
    await alice.join(name);
    await refusal(bob.join(name), bob, "room_full", { type: "join", room: name });
    assert.equal(bob.rooms.size, 0);
  });

  test("user_offline", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    await refusal(client.direct(unique("nobody"), "hello?"), client, "user_offline", { type: "direct" });
  });

  test("unknown_type", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    await refusal(client.request("nosuchtype", 1), client, "unknown_type", { type: "nosuchtype" });
    const room = await client.join(unique("room"));
    // A room without an on_<type> method and no handler of the manager's either.
    await refusal(room.request("nosuchtype"), client, "unknown_type", { type: "nosuchtype", room: room.name });
  });

  test("invalid_message: an invalid room name", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    await refusal(client.join("no spaces allowed"), client, "invalid_message", {
      type: "join",
      room: "no spaces allowed",
    });
    assert.equal(client.rooms.size, 0);
    await refusal(client.request("typing", null, { room: "" }), client, "invalid_message", { type: "typing", room: "" });
  });

  test("internal_error: a handler that raises", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    const room = await client.join(unique("boom"));
    await refusal(room.request("boom"), client, "internal_error", { type: "boom", room: room.name });
    // The connection stays open after each error.
    await room.send("still here");
    assert.equal(client.state, "open");
  });

  test("an error answering no request goes to the client's error event (invalid_json)", T, async (t) => {
    const h = harness(t);
    const warned = [];
    const original = console.warn;
    console.warn = (...args) => warned.push(args.join(" "));
    t.after(() => {
      console.warn = original;
    });
    const client = await h.open(server.url, { params: { name: "alice" } });
    // Nothing in the API sends text that is not JSON: write it on the socket underneath.
    const reported = new Promise((resolve) => client.once("error", resolve));
    client.wire.sockets[0].send("{this is not json");
    const error = await deadline(reported, WAIT, "the error event");
    // A `once` listener heard it: it is not also logged as an error nobody listened to.
    assert.deepEqual(warned, []);
    console.warn = original;
    assert.ok(error instanceof WsroomError);
    assert.equal(error.code, "invalid_json");
    assert.equal(error.ref, null);
    assert.equal(client.state, "open");
    await client.ping();
  });

  test("an error with no listener is logged, not thrown", T, async (t) => {
    const h = harness(t);
    const warned = [];
    const original = console.warn;
    console.warn = (...args) => warned.push(args.join(" "));
    t.after(() => {
      console.warn = original;
    });
    const client = await h.open(server.url, { params: { name: "alice" } });
    client.wire.sockets[0].send("[1, 2");
    await client.ping();
    console.warn = original;
    assert.equal(warned.length, 1);
    assert.match(warned[0], /wsroom\.js/);
  });
});

describe("rate_limited", () => {
  test("frames beyond the server's rate are refused, with their refs", T, async (t) => {
    const h = harness(t);
    // One frame per two seconds after a burst of 3: nothing refills during the test.
    const server = await h.server({ rate: 0.5, burst: 3 });
    const client = await h.open(server.url, { params: { name: "alice" } });
    const room = await client.join(unique("rate")); // 1
    await room.send("one"); // 2
    await room.send("two"); // 3
    const errors = await Promise.allSettled([room.send("three"), room.send("four"), client.ping()]);
    for (const result of errors) {
      assert.equal(result.status, "rejected");
      const error = result.reason;
      assert.ok(error instanceof WsroomError);
      assert.equal(error.code, "rate_limited");
      assert.ok(client.wire.sent.some((frame) => frame.ref === error.ref));
    }
    assert.deepEqual(
      errors.map((r) => client.wire.sent.find((f) => f.ref === r.reason.ref).type),
      ["message", "message", "ping"],
    );
    assert.equal(errors[0].reason.room, room.name);
    assert.equal(client.state, "open");
  });
});
