from wsroom import ConnectionManager, Limits, Room


class ChatRoom(Room):  # your room class
    history_size = 50


manager = ConnectionManager(ChatRoom, limits=Limits.without_rate_limits())
# other fields as keyword arguments:
limits = Limits.without_rate_limits(max_queue=4096, max_queue_bytes=4 * 1024 * 1024)
