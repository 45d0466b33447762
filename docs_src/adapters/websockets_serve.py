from typing import Any

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve


async def main(manager: ConnectionManager, host: str, port: int, **kwargs: Any) -> None:
    async with serve(
        manager, host, port, process_request=None, shutdown_timeout=5.0, **kwargs
    ) as server:
        await server.serve_forever()
