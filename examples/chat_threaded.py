"""The chat of ``chat.py`` on a threaded ``websockets.sync`` server: ws://127.0.0.1:8765/?user=alice.

    python -m examples.chat_threaded [PORT]

The rooms and the authentication are ``chat.py``'s; only the server changes. Each client
gets threads of its own, while the rooms and their hooks run on one event loop in a
background thread, so ``ChatRoom``'s ``async def`` hooks work unchanged. ``/wsroom.js``
serves the browser client; every other path is the WebSocket. Ctrl+C or SIGTERM shuts down
gracefully: clients get what is queued for them, then close code 1001.
"""

import signal
import sys
import threading

from examples.chat import ChatRoom, authenticate
from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync


def main(port: int = 8765) -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    script = websockets_sync.client_script()
    with websockets_sync.serve(manager, "127.0.0.1", port, process_request=script) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for serve_forever() to return: call it from another thread.
            threading.Thread(target=server.shutdown).start()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        port = server.socket.getsockname()[1]  # the one chosen when PORT is 0
        print(f"chat on ws://127.0.0.1:{port}/?user=alice, wsroom.js at /wsroom.js", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
