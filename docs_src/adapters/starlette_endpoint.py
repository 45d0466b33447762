from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from wsroom import ConnectionManager
from wsroom.adapters.starlette import endpoint

manager = ConnectionManager()
app = Starlette(routes=[WebSocketRoute("/ws", endpoint(manager))])
