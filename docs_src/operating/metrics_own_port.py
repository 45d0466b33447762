import prometheus_client

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve
from wsroom.metrics import MetricsCollector

manager = ConnectionManager()


async def main(host: str = "", port: int = 8765, metrics_address: str = "10.0.0.5") -> None:
    # The metrics on a port of their own, bound to an address only your network reaches:
    # nothing on the public port to guard. The default registry adds the process metrics
    # (CPU, memory, open files) of prometheus_client.
    prometheus_client.REGISTRY.register(MetricsCollector(manager))
    prometheus_client.start_http_server(9100, addr=metrics_address)
    async with serve(manager, host, port) as server:
        await server.serve_forever()
