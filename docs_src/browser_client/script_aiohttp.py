from aiohttp import web

from wsroom import ConnectionManager
from wsroom.adapters.aiohttp import client_route, setup

manager = ConnectionManager()
app = web.Application()
app.add_routes([client_route()])
setup(app, manager, "/ws")
