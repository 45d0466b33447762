from wsroom import ConnectionManager
from wsroom.adapters.websockets_sync import client_script, serve


def main(manager: ConnectionManager) -> None:
    with serve(manager, "127.0.0.1", 8765, process_request=client_script()) as server:
        server.serve_forever()
