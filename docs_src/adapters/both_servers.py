import asyncio
import threading

from websockets.sync.server import serve as sync_serve

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve
from wsroom.adapters.websockets_sync import SyncAdapter


async def main() -> None:
    manager = ConnectionManager()
    async with serve(manager, "127.0.0.1", 8765) as server:  # starts the manager on this loop
        adapter = SyncAdapter(manager)  # after that: it reuses this loop, no background loop
        options = adapter.options()
        with sync_serve(adapter.handler, "127.0.0.1", 8766, **options) as threaded:
            thread = threading.Thread(target=threaded.serve_forever, name="threaded-server")
            thread.start()
            try:
                await server.serve_forever()  # until Ctrl+C: the rooms shut down first
            finally:
                await asyncio.to_thread(threaded.shutdown)
                thread.join()


if __name__ == "__main__":
    asyncio.run(main())
