from wsroom import Connection, ConnectionManager, Message

manager = ConnectionManager()


@manager.handler("whoami")
def whoami(conn: Connection, message: Message) -> None:
    conn.send_event("you", {"user": conn.user, "rooms": sorted(conn.rooms)})
