import { connect } from "/wsroom.js";

const token = sessionStorage.getItem("token") ?? ""; // however your page keeps it
/** @param {{ from: string | null, data: unknown }} m */
const show = (m) => console.log(`${m.from ?? "server"}:`, m.data);

const client = connect("/ws", { params: { token } });
client.on("state", (state) => console.log(state));  // connecting, open, reconnecting, closed
const room = await client.join("lobby");             // resolves once joined
room.history.forEach(show);                           // the room's recent messages
room.on("message", show);                             // every new one, once
const { id } = await room.send({ text: "hi" });       // the stored message's id
console.log(`stored as ${id}`);
