from starlette.applications import Starlette

from wsroom import ConnectionManager
from wsroom.adapters.starlette import client_route, routes

manager = ConnectionManager()
app = Starlette(routes=[client_route(), *routes("/ws", manager)])
# FastAPI: app.router.routes.append(client_route())
