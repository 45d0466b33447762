// How a TypeScript application uses wsroom.js: type-checked against wsroom.d.ts (never run)
// by tests/test_browser_client_node.py. Each `@ts-expect-error` marks a mistake the
// declarations must catch; tsc fails if one of them compiles.

import {
  CLIENT_ERROR_CODES,
  Client,
  Room,
  SERVER_ERROR_CODES,
  SUBPROTOCOLS,
  VERSION,
  WsroomError,
  connect,
} from "../../src/wsroom/browser/wsroom.js";

export async function chat(token: string): Promise<void> {
  const client: Client = connect("wss://chat.example/ws", {
    params: async () => ({ token }),
    reconnect: (info) => info.code !== 4001,
    minDelay: 250,
    maxDelay: 10_000,
    timeout: 5_000,
    maxQueue: 50,
    pingInterval: 20_000,
    WebSocket: globalThis.WebSocket,
  });
  connect(new URL("ws://127.0.0.1:8765/ws"), { params: { token, name: "alice" }, reconnect: false });

  const off: () => void = client.on("state", (state, info) => {
    if (state === "reconnecting") console.log(`retry in ${info.delay} ms, attempt ${info.attempt}`);
    if (state === "closed" && info.error) console.log(info.error.code, info.error.status);
  });
  off();
  client.once("welcome", (welcome) => console.log(welcome.connection, welcome.user, welcome.heartbeat));
  client.on("direct", (message) => console.log(message.from, message.data, message.id, message.ts));
  client.on("event", (event) => console.log(event.type, event.data));
  client.on("error", (error) => console.warn(error.message));

  const user: string | null = client.user;
  const connection: string | null = client.connectionId;
  const heartbeat: number | null = client.heartbeat;
  const protocol: string | null = client.protocol;
  console.log(user, connection, heartbeat, protocol, client.state === "open");

  const room: Room = await client.join("lobby", { data: { invite: "x1" } });
  room.on("message", (message) => {
    const id: number = message.id;
    const from: string | null = message.from;
    console.log(id, from, message.data, message.ts, message.replayed === true);
  });
  room.on("presence", (presence) => console.log(presence.event === "join", presence.user));
  room.on("members", (members) => console.log(members.length));
  room.on("gap", (gap) => console.log(gap.reason, gap.epoch, gap.offset));
  room.on("event", (event) => console.log(event.type, event.room));
  room.once("left", (info) => console.log(info.room, info.error?.code));

  const name: string = room.name;
  const members: readonly string[] = room.members;
  const recovered: boolean | null = room.recovered;
  const offset: number = room.offset;
  const epoch: string | null = room.epoch;
  console.log(name, members, room.history.length, recovered, offset, epoch, room.state === "joined");

  const ack = await room.send({ text: "hi" });
  const messageId: number | undefined = ack.id;
  await room.request("typing", { draft: true });
  await client.request("whoami");
  await client.request("typing", null, { room: "lobby" });
  await client.direct("bob", { text: "psst" });
  const rtt: number = await client.ping();
  console.log(messageId, rtt, client.room("lobby") === room, client.rooms.get("lobby"));

  try {
    await client.join("private");
  } catch (error) {
    if (error instanceof WsroomError) {
      const code: string = error.code;
      const ref: string | number | null = error.ref;
      console.log(code, ref, error.room, error.status, error.closeCode, error.code === "forbidden");
    }
  }
  await room.leave();
  client.reconnect();
  client.close();
  client.close(4000, "bye");
  console.log(VERSION, SUBPROTOCOLS[0], SERVER_ERROR_CODES.includes("room_full"), CLIENT_ERROR_CODES.length);
}

export function mistakes(client: Client, room: Room, error: WsroomError): void {
  // @ts-expect-error: no such event on a client
  client.on("mesage", () => {});
  // @ts-expect-error: "message" is a room's event, not a client's
  client.on("message", () => {});
  // @ts-expect-error: "welcome" is a client's event, not a room's
  room.on("welcome", () => {});
  // @ts-expect-error: a client is never "opened"; the state is "open"
  if (client.state === "opened") return;
  // @ts-expect-error: a room is never "closed"; it is "left"
  if (room.state === "closed") return;
  // @ts-expect-error: no such error code
  if (error.code === "not_found") return;
  // @ts-expect-error: a room's name is a string
  void client.join(42);
  // @ts-expect-error: the state is read-only
  client.state = "open";
  // @ts-expect-error: the user may be null (anonymous)
  const user: string = client.user;
  void user;
}
