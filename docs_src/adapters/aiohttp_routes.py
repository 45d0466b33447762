from aiohttp import web

from wsroom import ConnectionManager
from wsroom.adapters import aiohttp as wsroom_aiohttp

manager = ConnectionManager()
app = web.Application()
app.add_routes(
    [
        wsroom_aiohttp.client_route(),  # wsroom.js at /wsroom.js
        *wsroom_aiohttp.routes(manager, "/ws", heartbeat=30.0, compress=False),
    ]
)
wsroom_aiohttp.lifecycle(app, manager, shutdown_timeout=10.0)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=8765)
