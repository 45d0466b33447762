import { connect } from "/wsroom.js";

const client = connect("/ws");
/** @param {unknown} what */
const show = (what) => console.log(what);

const room = await client.join("lobby", { data: { invite: "x1" } });
show(room.members);  // ["alice", "bob"]: users, not connections
show(room.history);  // the newest stored messages, oldest first
room.on("message", (m) => show(m));                          // { room, id, from, data, ts }
room.on("presence", ({ event, user }) => show([event, user])); // "join" or "leave"
room.on("members", (members) => show(members));             // after every change, and after a re-join
room.on("gap", ({ reason }) => show(reason));                // messages may have been missed
room.on("event", ({ type, data }) => show([type, data]));    // application events (broadcast_event)
room.on("left", ({ error }) => show(error));                 // left, or refused on a re-join

const ack = await room.send({ text: "hi" });   // { id }: the stored message's id
show(ack.id);
await room.request("typing", {});              // a custom type: the server's on_typing
await room.leave();
