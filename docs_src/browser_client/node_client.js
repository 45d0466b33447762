import { WebSocket } from "ws";
import { connect } from "wsroom";

const token = "a token your server accepts";
const client = connect("ws://127.0.0.1:8765/ws", { WebSocket, params: { token } });
console.log(client.state); // connecting
