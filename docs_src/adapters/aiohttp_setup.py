from aiohttp import web

from wsroom import ConnectionManager
from wsroom.adapters import aiohttp as wsroom_aiohttp

manager = ConnectionManager()
app = web.Application()  # and your other routes
wsroom_aiohttp.setup(app, manager, "/ws")

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=8765)
