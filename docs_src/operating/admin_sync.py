from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync

from admin_check import is_operator


def main() -> None:
    manager = ConnectionManager()
    admin = websockets_sync.admin_view(manager, is_operator)
    with websockets_sync.serve(manager, "127.0.0.1", 8765, process_request=admin) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
