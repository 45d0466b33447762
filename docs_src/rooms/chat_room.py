from typing import Any

from wsroom import Connection, ConnectionManager, Message, ProtocolError, Room


class ChatRoom(Room):
    history_size = 200  # default 100
    history_ttl = 600.0  # default 3600.0
    max_members = 50  # default 10_000
    echo = True  # default True

    def __init__(self, name: str, manager: ConnectionManager) -> None:
        super().__init__(name, manager)
        # Lives as long as the room has members in this process (one per process).
        self.topic = ""

    def can_join(self, conn: Connection, data: Any) -> bool:
        # "team:<name>" rooms are for that team's members only.
        if self.name.startswith("team:"):
            return self.name.removeprefix("team:") in conn.state.get("teams", ())
        return True

    def on_join(self, conn: Connection) -> None:
        conn.send_event("topic", {"topic": self.topic}, room=self.name)

    async def on_message(self, conn: Connection, message: Message) -> None:
        if conn.user is None:
            raise ProtocolError("forbidden", "sign in to post")
        await self.broadcast(message)

    async def on_set_topic(self, conn: Connection, message: Message) -> None:
        # A custom type: {"type": "set_topic", "room": "...", "data": "new topic"}
        if not isinstance(message.data, str):
            raise ProtocolError("invalid_message", "the topic must be a string")
        self.topic = message.data[:200]
        await self.broadcast_event("topic", {"topic": self.topic, "by": conn.user})


manager = ConnectionManager(ChatRoom)
