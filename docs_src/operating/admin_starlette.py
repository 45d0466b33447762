from starlette.applications import Starlette

from wsroom import ConnectionManager
from wsroom.adapters.starlette import admin_routes, routes

from admin_check import is_operator

manager = ConnectionManager()
app = Starlette(routes=[*routes("/ws", manager), *admin_routes(manager, is_operator)])
# uvicorn admin_starlette:app, or wsroom.adapters.uvicorn.run(app, manager)
