import asyncio
import signal

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve


async def main() -> None:
    manager = ConnectionManager()
    async with serve(manager, "", 8765, shutdown_timeout=10.0) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)  # not available on Windows
        await server.serve_forever()  # until Ctrl+C or SIGTERM, then a graceful shutdown


if __name__ == "__main__":
    asyncio.run(main())
