from wsroom import ConnectionManager
from wsroom.backplane.redis import RedisBackplane

from server import ChatRoom, authenticate  # your rooms and hook, as in Getting started

manager = ConnectionManager(
    ChatRoom,
    authenticate=authenticate,
    backplane=RedisBackplane("redis://10.0.0.5:6379/0", prefix="chat"),
)
