from wsroom import ConnectionManager, Room

from chat_room import ChatRoom  # the first example of this page, saved as chat_room.py


class LobbyRoom(Room):
    history_size = 0


def choose_room(name: str) -> type[Room] | None:
    if name == "lobby":
        return LobbyRoom
    if name.startswith(("chat:", "team:")):
        return ChatRoom
    return None


manager = ConnectionManager(choose_room)
