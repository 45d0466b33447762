"""The chat of ``chat.py`` next to a Quart application, on one port.

    python -m examples.quart_chat [PORT]

Quart serves its pages (``/``, and ``/rooms/<name>``, which asks the manager who is in a
room); wsroom's ASGI application, in front of Quart's, serves the WebSocket at
``/ws?user=alice`` and ``wsroom.js`` at ``/wsroom.js``. The lifespan protocol goes through
both: Quart's ``before_serving`` runs, then the manager starts; at shutdown the manager
closes every client (1001) before Quart's ``after_serving`` runs. ``application`` runs
under any ASGI server (``hypercorn examples.quart_chat:application``); this command runs
it through ``wsroom.adapters.uvicorn``, for wsroom's frame limit and a graceful shutdown on
Ctrl+C or SIGTERM.
"""

import sys

from quart import Quart

from examples.chat import ChatRoom, authenticate
from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.asgi import WSRoomApp

manager = ConnectionManager(ChatRoom, authenticate=authenticate)
app = Quart(__name__)


@app.get("/")
async def index() -> str:
    return "A Quart page; the chat is at ws://this-host/ws?user=alice\n"


@app.get("/rooms/<room>")
async def members(room: str) -> dict[str, object]:
    return {"room": room, "members": await manager.members(room)}


application = WSRoomApp(manager, path="/ws", app=app, client_path="/wsroom.js")

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    wsroom_uvicorn.run(application, manager, host="127.0.0.1", port=port)  # logs the port it took
