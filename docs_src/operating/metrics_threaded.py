from typing import Any

from websockets.http11 import Request, Response

from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync

from metrics_token import has_token

manager = ConnectionManager()
script = websockets_sync.client_script()
metrics = websockets_sync.metrics_endpoint(manager, authorize=has_token)


def pages(connection: Any, request: Request) -> Response | None:
    # One process_request for both: each answers its own path, None lets the rest through.
    return script(connection, request) or metrics(connection, request)


def main(host: str = "", port: int = 8765) -> None:
    with websockets_sync.serve(manager, host, port, process_request=pages) as server:
        server.serve_forever()
