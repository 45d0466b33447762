// When wsroom.js retries and when it gives up: never after HTTP 401 or 403 or a 1008 close,
// later than usual after an eviction (1013), and with growing, jittered delays otherwise.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { WsroomError } from "../../src/wsroom/browser/wsroom.js";
import { freePort, harness, nextState, record, startServer, unique } from "./helpers.mjs";

const T = { timeout: 15000 };

describe("giving up", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  for (const [token, status] of [
    ["bad", 401],
    ["banned", 403],
  ]) {
    test(`no retry after HTTP ${status}`, T, async (t) => {
      const h = harness(t);
      const client = h.client(server.url, { params: { token } });
      const states = record(client, "state");
      // A join made before the refusal fails with it.
      const join = client.join(unique("never"));
      const info = await nextState(client, "closed");
      assert.ok(info.error instanceof WsroomError);
      assert.equal(info.error.code, "refused");
      assert.equal(info.error.status, status);
      assert.equal(info.status, status);
      await assert.rejects(join, { code: "refused", status });
      assert.equal(client.state, "closed");
      assert.deepEqual(
        states.map(([state]) => state),
        ["closed"],
      );
      assert.equal(client.wire.sockets.length, 1);
      await assert.rejects(client.join("lobby"), { code: "closed" });
      await assert.rejects(client.ping(), { code: "closed" });
      assert.throws(() => client.reconnect(), { code: "closed" });
    });
  }

  test("no retry after the server closes with 1008", T, async (t) => {
    const h = harness(t);
    const client = await h.open(server.url, { params: { name: "alice" } });
    const room = await client.join(unique("kicked"));
    const states = record(client, "state");
    const left = record(room, "left");
    const closed = nextState(client, "closed");
    await assert.rejects(client.request("kick"), { code: "disconnected", closeCode: 1008 });
    const info = await closed;
    assert.equal(info.code, 1008);
    assert.equal(info.error.code, "refused");
    assert.equal(info.error.closeCode, 1008);
    assert.deepEqual(
      states.map(([state]) => state),
      ["closed"],
    );
    assert.equal(left.length, 1);
    assert.equal(left[0].error.code, "refused");
    assert.equal(client.wire.sockets.length, 1);
  });

  test("no retry after manager.disconnect_user (1008)", T, async (t) => {
    const h = harness(t);
    const target = unique("target");
    const victim = await h.open(server.url, { params: { name: target } });
    const admin = await h.open(server.url, { params: { name: "admin" } });
    const closed = nextState(victim, "closed");
    await admin.request("disconnect_user", target);
    const info = await closed;
    assert.equal(info.code, 1008);
    assert.equal(info.error.code, "refused");
    assert.equal(victim.wire.sockets.length, 1);
  });

  test("reconnect: false closes on any drop; a function decides", T, async (t) => {
    const h = harness(t);
    const never = await h.open(server.url, { reconnect: false });
    const closed = nextState(never, "closed");
    never.request("kick", 1012).catch(() => {});
    const info = await closed;
    assert.equal(info.code, 1012);
    assert.equal(info.error, null);

    const asked = [];
    const decides = await h.open(server.url, {
      reconnect: (info) => {
        asked.push(info.code);
        return info.code === 1008; // even a policy close, when the application says so
      },
    });
    decides.request("kick", 1008).catch(() => {});
    await nextState(decides, "reconnecting");
    await nextState(decides, "open");
    const gone = nextState(decides, "closed");
    decides.request("kick", 1012).catch(() => {});
    await gone;
    assert.deepEqual(asked, [1008, 1012]);
  });
});

describe("backoff", () => {
  test("after an eviction (1013) the next attempt waits at least the slow-client minimum", T, async (t) => {
    const h = harness(t);
    const server = await h.server({ maxQueue: 8 });
    const minDelay = 100;
    const client = await h.open(server.url, { minDelay, maxDelay: 10000 });
    // An ordinary drop waits one step: minDelay / 2 to minDelay.
    const dropped = nextState(client, "reconnecting");
    client.request("kick", 1012).catch(() => {});
    const usual = await dropped;
    assert.equal(usual.code, 1012);
    assert.equal(usual.attempt, 1);
    assert.ok(usual.delay >= minDelay / 2 && usual.delay <= minDelay, `delay ${usual.delay}`);
    await nextState(client, "open");

    // 100 events at once overflow a queue of 8: the server evicts the client.
    const evicted = nextState(client, "reconnecting");
    client.request("flood", 100).catch(() => {});
    const info = await evicted;
    assert.equal(info.code, 1013);
    // As after 3 failures: a step of minDelay * 2 ** 3, of which at least half is waited.
    assert.ok(info.delay >= 4 * minDelay && info.delay <= 8 * minDelay, `delay ${info.delay}`);
    assert.equal(info.attempt, 4);
    await nextState(client, "open");
  });

  test("delays grow exponentially up to maxDelay, with jitter", T, async (t) => {
    const h = harness(t);
    const port = await freePort();
    const minDelay = 20;
    const maxDelay = 320;
    const attempts = 9;
    const clients = [0, 1].map(() => h.client(`ws://127.0.0.1:${port}/ws`, { minDelay, maxDelay }));
    const infos = await Promise.all(
      clients.map(
        (client) =>
          new Promise((resolve) => {
            const seen = [];
            client.on("state", (state, info) => {
              assert.equal(state, "reconnecting");
              seen.push(info);
              if (seen.length === attempts) {
                client.close();
                resolve(seen);
              }
            });
          }),
      ),
    );
    const ratios = [];
    for (const seen of infos) {
      seen.forEach((info, index) => {
        assert.equal(info.attempt, index + 1);
        assert.equal(info.code, 1006);
        assert.equal(info.status, null);
        const step = Math.min(maxDelay, minDelay * 2 ** index);
        assert.ok(
          info.delay >= step / 2 && info.delay <= step,
          `attempt ${index + 1}: delay ${info.delay} not within [${step / 2}, ${step}]`,
        );
        ratios.push(info.delay / step);
      });
      // Capped: the last attempts all have maxDelay's step, and still differ.
      assert.ok(new Set(seen.slice(4).map((info) => info.delay)).size > 1, "no jitter at maxDelay");
    }
    // Jittered: the delays are not one fixed fraction of their steps.
    assert.ok(Math.max(...ratios) - Math.min(...ratios) > 0.1, `ratios ${ratios}`);
    const [first, second] = infos.map((seen) => seen.map((info) => info.delay));
    assert.notDeepEqual(first, second);
  });
});
