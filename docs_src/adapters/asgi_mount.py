from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from wsroom import ConnectionManager
from wsroom.adapters.asgi import WSRoomApp

manager = ConnectionManager()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with manager:  # started here, shut down (clients get 1001) on the way out
        yield


# ws://host/rooms/ws and /rooms/wsroom.js: paths are below the mount point.
app = Starlette(
    routes=[Mount("/rooms", app=WSRoomApp(manager, path="/ws", client_path="/wsroom.js"))],
    lifespan=lifespan,
)
