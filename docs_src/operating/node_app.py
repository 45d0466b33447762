"""One chat node as an ASGI application, for ``uvicorn``, ``uvicorn --workers`` and
gunicorn; with ``REDIS_URL`` set, every process serves the same rooms."""

import os

from starlette.applications import Starlette

from wsroom import Connection, ConnectionManager, Handshake, Message
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import client_route, routes


def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None  # a placeholder: check a token here


def make_manager() -> ConnectionManager:
    backplane = None
    if redis_url := os.environ.get("REDIS_URL"):
        from wsroom.backplane.redis import RedisBackplane

        backplane = RedisBackplane(redis_url, prefix=os.environ.get("REDIS_PREFIX", "chat"))
    return ConnectionManager(
        authenticate=authenticate,
        backplane=backplane,
        # Only behind a proxy you run, that sets the header, and that clients cannot bypass.
        client_address_header=os.environ.get("CLIENT_ADDRESS_HEADER") or None,
    )


# Each process (each worker of uvicorn --workers or gunicorn) imports this module and gets a
# manager of its own.
manager = make_manager()


@manager.handler("node")
def node(conn: Connection, message: Message) -> dict[str, object]:
    # Which process serves this client: the ack's data.
    return {"pid": os.getpid(), "address": conn.handshake.client_address}


app = Starlette(
    routes=[client_route(), *routes("/ws", manager)],
    # Starts the manager; on SIGTERM or SIGINT, clients get what is queued for them and
    # 1001 before uvicorn stops.
    lifespan=wsroom_uvicorn.lifespan(manager),
)
