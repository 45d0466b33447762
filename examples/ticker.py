"""Prices pushed from a plain thread into room ``ticker`` of a threaded server.

    python -m examples.ticker [PORT]       # TICK_MS=500 by default

Clients join ``ticker`` on ws://127.0.0.1:8765/ and get the last 100 ticks, then every new
one. A client that reconnects and joins with ``since`` (the last id it saw) and ``epoch``
gets exactly the ticks it missed. The publisher is an ordinary ``threading.Thread``, as a
market feed or a sensor reader would be: it reaches the rooms through
``manager.from_thread``, never by calling the manager directly. Ctrl+C or SIGTERM stops
the publisher first, then shuts the server down gracefully.
"""

import os
import random
import signal
import sys
import threading

from wsroom import Connection, ConnectionManager, Message, ProtocolError, Room
from wsroom.adapters import websockets_sync

TICK_SECONDS = int(os.environ.get("TICK_MS", "500")) / 1000


class TickerRoom(Room):
    history_size = 100  # what a late joiner sees, and how far back a reconnect recovers

    def can_join(self, conn: Connection, data: object) -> bool:
        return self.name == "ticker"

    def on_message(self, conn: Connection, message: Message) -> None:
        raise ProtocolError("forbidden", "the ticker is read-only")


def publish(manager: ConnectionManager, stopping: threading.Event) -> None:
    price = 100.0
    while not stopping.wait(TICK_SECONDS):
        price = round(price * random.uniform(0.995, 1.005), 2)
        # Blocks until the loop has stored and sent it; a thread streaming faster than
        # this would use broadcast_nowait() (docs/server-api.md).
        manager.from_thread.broadcast("ticker", {"symbol": "ACME", "price": price})


def main(port: int = 8765) -> None:
    manager = ConnectionManager(TickerRoom)  # anyone may read: no authenticate hook
    stopping = threading.Event()
    with websockets_sync.serve(manager, "127.0.0.1", port) as server:
        publisher = threading.Thread(target=publish, args=(manager, stopping), daemon=True)

        def stop() -> None:
            # The publisher first: calls on a manager that was shut down raise RuntimeError.
            stopping.set()
            publisher.join()
            server.shutdown()

        def on_signal(signum: int, frame: object) -> None:
            # Not here: shutdown() waits for serve_forever(), which this thread runs.
            threading.Thread(target=stop).start()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        publisher.start()
        port = server.socket.getsockname()[1]  # the one chosen when PORT is 0
        print(f"ticker on ws://127.0.0.1:{port}/, room 'ticker'", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
