from starlette.applications import Starlette

from wsroom import ConnectionManager
from wsroom.adapters.starlette import metrics_route, routes

from metrics_token import has_token

manager = ConnectionManager()

app = Starlette(routes=[*routes("/ws", manager), metrics_route(manager, authorize=has_token)])
