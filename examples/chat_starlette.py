"""The chat of ``chat.py`` in a Starlette application under uvicorn: ws://127.0.0.1:8765/ws?user=alice.

    python -m examples.chat_starlette [PORT]

The rooms and the authentication are ``chat.py``'s; only the server changes. The
application serves the browser client at ``/wsroom.js`` and the rooms at ``/ws`` (a plain
``GET /ws`` gets 426 Upgrade Required); add your own routes next to them.
``wsroom.adapters.uvicorn`` runs uvicorn with wsroom's frame limit, a deadline for request
heads, and a graceful shutdown on Ctrl+C or SIGTERM (what is queued, then close code 1001).
"""

import sys

from starlette.applications import Starlette

from examples.chat import ChatRoom, authenticate
from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import client_route, routes

manager = ConnectionManager(ChatRoom, authenticate=authenticate)
app = Starlette(routes=[client_route(), *routes("/ws", manager)])

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    wsroom_uvicorn.run(app, manager, host="127.0.0.1", port=port)  # logs the port it took
