from wsroom import ConnectionManager

from server import ChatRoom, authenticate  # your rooms and hook, as in Getting started

manager = ConnectionManager(
    ChatRoom,
    authenticate=authenticate,
    client_address_header="X-Forwarded-For",
)
