from wsroom import ConnectionManager

from server import ChatRoom, authenticate

manager = ConnectionManager(
    ChatRoom, authenticate=authenticate, allowed_origins=["http://localhost:8000"]
)
