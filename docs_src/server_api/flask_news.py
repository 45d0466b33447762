import threading

from flask import Flask, request

from wsroom import ConnectionManager, Handshake, Room
from wsroom.adapters import websockets_sync


class NewsRoom(Room):
    history_size = 20


def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None  # placeholder: see authentication.md


manager = ConnectionManager(NewsRoom, authenticate=authenticate)
app = Flask(__name__)


@app.post("/announce")
def announce() -> dict[str, object]:
    # Flask runs each view in a thread of its own: use the blocking API.
    message_id = manager.from_thread.broadcast("news", {"text": request.json["text"]})
    return {"id": message_id, "readers": manager.from_thread.members("news")}


@app.post("/ban/<user>")
def ban(user: str) -> dict[str, object]:
    return {"closed": manager.from_thread.disconnect_user(user, 4003, "banned")}


if __name__ == "__main__":
    with websockets_sync.serve(manager, "127.0.0.1", 8765) as rooms:
        threading.Thread(target=rooms.serve_forever, name="wsroom").start()
        app.run("127.0.0.1", 5000)  # until Ctrl+C
    # Leaving the block shut the rooms down gracefully: queued frames, then 1001.
