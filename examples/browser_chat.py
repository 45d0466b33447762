"""A chat page on wsroom.js: http://127.0.0.1:8765/?user=alice (and ?user=bob in another tab).

    python -m examples.browser_chat [PORT]

One port serves the page (``/``), the browser client (``/wsroom.js``) and the WebSocket
(``/ws``). The user is the ``user`` query parameter: there is no password, so it is an
example, not something to deploy.
"""

from __future__ import annotations

import asyncio
import sys
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from wsroom import ConnectionManager, Handshake, Room
from wsroom.adapters.websockets import client_script, serve

PAGE = (Path(__file__).parent / "browser_chat.html").read_bytes()
serve_script = client_script("/wsroom.js")


class ChatRoom(Room):
    history_size = 50


def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user")  # your token check here; None refuses with HTTP 401


def routes(connection: ServerConnection, request: Request) -> Response | None:
    """The page and the script over plain HTTP; ``/ws`` goes on to the WebSocket."""
    if request.path.partition("?")[0] == "/":
        headers = Headers([("Content-Type", "text/html; charset=utf-8")])
        return Response(HTTPStatus.OK.value, "OK", headers, PAGE)
    return serve_script(connection, request)


async def main(port: int = 8765) -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", port, process_request=routes) as server:
        print(f"open http://127.0.0.1:{port}/?user=alice", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
