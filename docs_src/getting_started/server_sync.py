from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync

from server import ChatRoom, authenticate


def main() -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    with websockets_sync.serve(manager, "127.0.0.1", 8765) as server:
        print("listening on ws://127.0.0.1:8765/ws")
        server.serve_forever()  # until Ctrl+C, then a graceful shutdown


if __name__ == "__main__":
    main()
