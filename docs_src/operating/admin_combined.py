from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from wsroom import ConnectionManager
from wsroom.adapters.websockets import admin_view, client_script

from admin_check import is_operator

manager = ConnectionManager()
# Elsewhere than /admin, with longer lists than the defaults.
admin = admin_view(manager, is_operator, path="/ops/admin", rooms=50, members=100)
script = client_script()


async def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """The admin view, then wsroom.js, then the WebSocket's own checks."""
    return await admin(connection, request) or script(connection, request)


# serve(manager, host, port, process_request=process_request)
