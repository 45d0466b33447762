import signal
import threading

from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync


def main() -> None:
    manager = ConnectionManager()
    with websockets_sync.serve(manager, "127.0.0.1", 8765) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for serve_forever() to return: call it from another thread.
            threading.Thread(target=server.shutdown).start()

        signal.signal(signal.SIGTERM, stop)
        server.serve_forever()  # until SIGTERM or Ctrl+C, then a graceful shutdown


if __name__ == "__main__":
    main()
