from http import HTTPStatus

from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from wsroom import ConnectionManager
from wsroom.adapters.websockets_sync import SyncAdapter


def routes(connection: ServerConnection, request: Request) -> Response | None:
    path = request.path.partition("?")[0]
    if path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    if path != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    return None  # /ws: continue with wsroom's checks, then the upgrade


def main() -> None:
    manager = ConnectionManager()
    adapter = SyncAdapter(manager)  # starts the manager on a background event loop
    options = adapter.options(process_request=routes, ping_interval=30)
    try:
        with serve(adapter.handler, "127.0.0.1", 8765, **options) as server:
            try:
                server.serve_forever()  # until Ctrl+C
            finally:
                # Before websockets closes the connections: queued frames, then 1001.
                adapter.run(manager.shutdown(timeout=5.0))
    finally:
        adapter.close()  # stops the background event loop


if __name__ == "__main__":
    main()
