import asyncio
import signal
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from wsroom import ConnectionManager
from wsroom.adapters.websockets import WebsocketsAdapter


def routes(connection: ServerConnection, request: Request) -> Response | None:
    path = request.path.partition("?")[0]
    if path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    if path != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    return None  # /ws: continue with wsroom's checks, then the upgrade


async def main() -> None:
    manager = ConnectionManager()
    adapter = WebsocketsAdapter(manager)
    options = adapter.options(process_request=routes, ping_interval=30)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(adapter.handler, "127.0.0.1", 8765, **options):
        await manager.start()
        await stop.wait()
        await manager.shutdown(timeout=5.0)  # before the server closes the connections


if __name__ == "__main__":
    asyncio.run(main())
