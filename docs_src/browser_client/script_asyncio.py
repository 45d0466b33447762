from wsroom import ConnectionManager
from wsroom.adapters.websockets import client_script, serve


async def main(manager: ConnectionManager) -> None:
    async with serve(manager, "127.0.0.1", 8765, process_request=client_script()) as server:
        await server.serve_forever()
