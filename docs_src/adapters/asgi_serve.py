from typing import Any

from wsroom import ConnectionManager
from wsroom.adapters.asgi import WSRoomApp, serve

manager = ConnectionManager()
rooms = WSRoomApp(manager)  # for the lifespan protocol and plain HTTP requests
API_KEYS = {"k-7f3a": "build-bot"}  # your own credentials store


def key_of(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return str(value.decode("latin-1"))
    return None


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        user = API_KEYS.get(key_of(scope) or "")
        if user is None:
            # Refused before the upgrade: the server answers HTTP 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        # Authenticated here: the manager's other checks (origin, rate...) still run.
        await serve(scope, receive, send, manager, user=user)
    else:
        await rooms(scope, receive, send)
