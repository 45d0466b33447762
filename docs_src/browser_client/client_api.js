import { connect } from "/wsroom.js";

const client = connect("/ws");
/** @param {unknown} what */
const show = (what) => console.log(what);

client.on("direct", (m) => show(m));                           // { id, from, data, ts }
const { id } = await client.direct("bob", { text: "psst" });   // user_offline if bob is not connected
client.on("event", ({ type, data }) => show([type, data]));    // events with no room (manager.send_all)
const { data } = await client.request("whoami");               // custom types with no room: data is the answer
show([id, data]);
