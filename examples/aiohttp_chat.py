"""The chat of ``chat.py`` in an ``aiohttp.web`` application: ws://127.0.0.1:8765/ws?user=alice.

    python -m examples.aiohttp_chat [PORT]

The rooms and the authentication are ``chat.py``'s; only the server changes. ``setup()``
adds the rooms at ``/ws`` (a plain ``GET /ws`` gets 426 Upgrade Required) and ties the
manager to the application: it starts with it, and on Ctrl+C or SIGTERM ``web.run_app``
shuts it down first, so every client gets what is queued for it, then close code 1001.
The browser client is served at ``/wsroom.js``; add your own routes next to them.
"""

import sys

from aiohttp import web

from examples.chat import ChatRoom, authenticate
from wsroom import ConnectionManager
from wsroom.adapters import aiohttp as wsroom_aiohttp

manager = ConnectionManager(ChatRoom, authenticate=authenticate)
app = web.Application()
app.add_routes([wsroom_aiohttp.client_route()])
wsroom_aiohttp.setup(app, manager, "/ws")

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    web.run_app(app, host="127.0.0.1", port=port, access_log=None)  # prints the port it took
