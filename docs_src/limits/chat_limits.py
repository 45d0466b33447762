from wsroom import ConnectionManager, Limits, Room


class ChatRoom(Room):  # your room class
    history_size = 50


manager = ConnectionManager(
    ChatRoom,
    limits=Limits(max_frame_size=16 * 1024, rate=20.0, rate_burst=40),
)
