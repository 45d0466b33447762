"""One chat served by several uvicorn workers, which share its rooms through Redis.

    uvicorn examples.redis_workers:app --workers 2 --port 8000 --ws-max-size 65536

Each worker process imports this module, so each has its own ``ConnectionManager`` and
``RedisBackplane``; through Redis they serve the same rooms: message ids and history,
presence, direct messages. Clients connect to ``ws://127.0.0.1:8000/ws?user=alice``
(``chat.py``'s rooms and placeholder authentication) and may land on either worker; the
custom frame ``{"type": "whoami"}`` answers with the event ``worker``, naming the process.
``WSROOM_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and ``WSROOM_REDIS_PREFIX``
(default ``chat``) choose the Redis and the key prefix. ``--ws-max-size`` is wsroom's
frame limit (``Limits.max_frame_size``), which plain uvicorn does not know.

The lifespan handler starts the manager with the worker (a Redis that does not answer
fails the startup) and drains it on SIGINT or SIGTERM, before uvicorn closes anything:
every client gets what is queued for it, then 1001 (uvicorn alone closes WebSockets with
1012 before the lifespan shutdown). The worker's presence leaves Redis at once. Clients
reconnect, to either worker, and recover what they missed from the history in Redis
(``join`` with ``since`` and ``epoch``; wsroom.js does it by itself). See
docs/operating.md, "Deployment recipes".
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from examples.chat import ChatRoom, authenticate
from wsroom import Connection, ConnectionManager, Message
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import client_route, routes
from wsroom.backplane.redis import RedisBackplane

backplane = RedisBackplane(
    os.environ.get("WSROOM_REDIS_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("WSROOM_REDIS_PREFIX", "chat"),
)
manager = ConnectionManager(ChatRoom, authenticate=authenticate, backplane=backplane)


@manager.handler("whoami")
def whoami(conn: Connection, message: Message) -> None:
    conn.send_event("worker", {"pid": os.getpid(), "node": backplane.node_id})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # start() now; on SIGINT or SIGTERM, a graceful shutdown before uvicorn's.
    async with wsroom_uvicorn.drain_on_signal(manager):
        yield


app = Starlette(routes=[client_route(), *routes("/ws", manager)], lifespan=lifespan)
