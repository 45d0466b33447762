from wsroom import ConnectionManager
from wsroom.adapters.websockets import metrics_endpoint, serve

from metrics_token import has_token

manager = ConnectionManager()


async def main(host: str = "", port: int = 8765) -> None:
    # /metrics on the WebSocket's own port, for the scraper's token only.
    metrics = metrics_endpoint(manager, authorize=has_token)
    async with serve(manager, host, port, process_request=metrics) as server:
        await server.serve_forever()
