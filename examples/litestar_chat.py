"""The chat of ``chat.py`` in a Litestar application, on one port.

    python -m examples.litestar_chat [PORT]

Litestar serves its pages (``/``, and ``/rooms/{room}``, which asks the manager who is in
a room) and routes ``/ws`` to wsroom's ASGI application
(``ws://127.0.0.1:8765/ws?user=alice``) and ``/wsroom.js`` to the browser client's. The
manager is one of the application's lifespan context managers: it starts with the
application and, at shutdown, closes every client (1001) after what is queued for it.
``app`` runs under any ASGI server (``uvicorn examples.litestar_chat:app``); this command
runs it through ``wsroom.adapters.uvicorn``, for wsroom's frame limit and a graceful
shutdown on Ctrl+C or SIGTERM.
"""

import sys

from litestar import Litestar, asgi, get

from examples.chat import ChatRoom, authenticate
from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.asgi import WSRoomApp, client_app

manager = ConnectionManager(ChatRoom, authenticate=authenticate)
# ASGI routes: WebSocket and HTTP requests to /ws go to wsroom's application.
chat = asgi("/ws", copy_scope=True)(WSRoomApp(manager))
wsroom_js = asgi("/wsroom.js", copy_scope=True)(client_app())


@get("/", media_type="text/plain")
async def index() -> str:
    return "A Litestar page; the chat is at ws://this-host/ws?user=alice\n"


@get("/rooms/{room:str}")
async def members(room: str) -> dict[str, object]:
    return {"room": room, "members": await manager.members(room)}


# A ConnectionManager is an async context manager: entered at startup, left at shutdown.
app = Litestar(route_handlers=[chat, wsroom_js, index, members], lifespan=[manager])

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    wsroom_uvicorn.run(app, manager, host="127.0.0.1", port=port)  # logs the port it took
