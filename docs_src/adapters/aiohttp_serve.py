from aiohttp import web

from wsroom import ConnectionManager
from wsroom.adapters import aiohttp as wsroom_aiohttp

manager = ConnectionManager()


def current_user(request: web.Request) -> str:
    user = request.query.get("user")  # placeholder: your session or token check
    if not user:
        raise web.HTTPUnauthorized()
    return user


async def chat(request: web.Request) -> web.StreamResponse:
    return await wsroom_aiohttp.serve(request, manager, user=current_user(request))


app = web.Application()
app.router.add_get("/ws", chat)
wsroom_aiohttp.lifecycle(app, manager)
