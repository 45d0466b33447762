from wsroom import ConnectionManager
from wsroom.threads import BackgroundLoop


def main() -> None:
    background = BackgroundLoop()
    manager = ConnectionManager()
    background.run(manager.start())  # the manager now runs on background.loop
    print(manager.from_thread.send_to_user("alice", "hello"))  # None: no such user connected
    background.run(manager.shutdown())
    background.stop()


if __name__ == "__main__":
    main()
