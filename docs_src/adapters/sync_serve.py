from typing import Any

from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync


def main(manager: ConnectionManager, host: str, port: int, **kwargs: Any) -> None:
    with websockets_sync.serve(
        manager, host, port, process_request=None, shutdown_timeout=5.0, **kwargs
    ) as server:
        server.serve_forever()
