from wsroom import Connection, ConnectionManager, Message

manager = ConnectionManager()


@manager.handler("my_rooms")
def my_rooms(conn: Connection, message: Message) -> list[str]:
    return sorted(conn.rooms)  # {"type": "ack", "ref": 4, "data": ["lobby", "team:red"]}
